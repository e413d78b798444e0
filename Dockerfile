# The boxoffice API image (used by compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY ledger ./ledger
COPY lua ./lua
RUN pip install --no-cache-dir . && useradd --system boxoffice
USER boxoffice
# Listening on 0.0.0.0, `serve` refuses to start without BOXOFFICE_ADMIN_TOKEN and
# BOXOFFICE_AUTH (pass them at run time: docker run -e BOXOFFICE_ADMIN_TOKEN=... -e
# BOXOFFICE_AUTH=jwt ...); none is baked into the image.
ENV BOXOFFICE_HOST=0.0.0.0 BOXOFFICE_PORT=8000
EXPOSE 8000
CMD ["boxoffice", "serve", "--host", "0.0.0.0"]
