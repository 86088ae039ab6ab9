from .cli import main

if __name__ == "__main__":  # vLLM's engine process re-imports the main module when it starts (spawn)
    main()
