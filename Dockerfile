# The cosfail image: every cosfail service of docker-compose.yml runs it (workers with
# the reference driver's COSprint inside, control worker, beat, API, Flower).
#   docker-compose build        (COSFAIL_UID/GID from deploy/cosfail.env, see deploy/README)
FROM python:3.11-slim-bookworm

# The user the services run as. Compose mounts secret files as they are on the host
# (no uid/gid/mode of their own), and libpq reads a PGPASSFILE only when it is private
# (mode 0600): so the uid here is the uid of the operator who made deploy/secrets/.
ARG COSFAIL_UID=1000
ARG COSFAIL_GID=1000
# One directory per node home: a new named volume takes the owner of the directory it
# is mounted on, so the homes belong to the cosfail user from the first start.
ARG COSFAIL_NODES="srv1 srv2 bcs1 cl1 cl2"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cosfail ./cosfail
COPY api ./api
COPY cosprint ./cosprint
COPY launcher ./launcher
COPY workers ./workers
COPY workflows ./workflows
RUN pip install ".[postgres]" && cd / && rm -rf /src

RUN groupadd --system --gid "${COSFAIL_GID}" cosfail \
 && useradd --system --uid "${COSFAIL_UID}" --gid cosfail --no-create-home \
        --home-dir /var/lib/cosfail --shell /usr/sbin/nologin cosfail \
 && mkdir -p /etc/cosfail /var/lib/cosfail \
 && for node in ${COSFAIL_NODES}; do mkdir -p "/var/lib/cosfail/${node}"; done \
 && chown -R cosfail:cosfail /var/lib/cosfail

USER cosfail
WORKDIR /var/lib/cosfail
ENV COSFAIL_DOMAIN=/etc/cosfail/domain.toml
CMD ["cosfail", "--help"]
