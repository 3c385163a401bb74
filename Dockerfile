FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN bash scripts/setup.sh
EXPOSE 8000
ENTRYPOINT [".venv/bin/comfystream"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
