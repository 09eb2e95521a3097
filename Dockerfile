# One image for every OmniAgent process: the ASGI web app (default command), the Celery worker and
# beat, and the Feishu long-connection listener (deploy/docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=omniagent.settings \
    OMNIAGENT_DATA_DIR=/app/var

WORKDIR /app

# Dependencies first so code changes reuse this layer. psycopg[binary] ships its own libpq.
COPY requirements.txt .
RUN pip install -r requirements.txt

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin omniagent
COPY --chown=omniagent:omniagent . .

# Static files for a proxy to serve from /app/var/static. Throwaway key values keep the build from
# generating (and baking in) real secrets; the running container gets its own from the environment.
RUN SECRET_KEY=build-only OMNIAGENT_ENCRYPTION_KEYS=YnVpbGQtb25seS1rZXktbm90LWZvci1ydW50aW1lMDA= \
    python manage.py collectstatic --noinput -v0 \
    && rm -f /app/var/*.sqlite3* \
    && chown -R omniagent:omniagent /app/var

USER omniagent
EXPOSE 8000
CMD ["uvicorn", "omniagent.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off", "--proxy-headers"]
