"""`lmforge export`: merged safetensors, GGUF and an Ollama Modelfile."""
