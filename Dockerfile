# The worker image: `docker build -t interest-stream .`
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY state ./state
COPY model ./model
COPY engine ./engine
COPY stream ./stream
RUN pip install --no-cache-dir . && useradd --system --create-home interest \
    && mkdir -p /var/lib/interest-stream && chown interest /var/lib/interest-stream
USER interest
# Compile the co-occurrence and candidate loops into numba's cache (~/.cache/numba) at build
# time, from / so that the installed package (the one the worker imports) is the one compiled.
RUN cd / && python -c "from model.counts import cand_kernels, cooc; cooc.warm_up(); cand_kernels.warm_up()"
EXPOSE 9464
ENTRYPOINT ["interest-stream"]
CMD ["worker"]
