# The origin alone; docker-compose.yml runs Pushpin beside it from Pushpin's official image.
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml ./
COPY app ./app
COPY pushpin ./pushpin
RUN pip install --no-cache-dir .
CMD ["python", "-m", "app", "--origin-only"]
