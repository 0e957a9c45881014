# grantbot image for the Kubernetes manifests (manifests/kubernetes/): non-root, no writes outside /tmp.
FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --no-create-home grantbot
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY bot ./bot
# The exact versions the project's tests ran with (requirements.lock), not whatever is newest on build day.
RUN pip install --no-cache-dir -c requirements.lock . && rm -rf /root/.cache
USER 10001
EXPOSE 8080
ENTRYPOINT ["grantbot"]
CMD ["serve"]
