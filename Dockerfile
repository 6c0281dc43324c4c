# The worker image: `docker build -t interest-stream .`
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY model ./model
COPY state ./state
RUN pip install --no-cache-dir . && useradd --system --create-home interest \
    && mkdir -p /var/lib/interest-stream && chown interest /var/lib/interest-stream
USER interest
EXPOSE 9464
ENTRYPOINT ["interest-stream"]
CMD ["worker"]
