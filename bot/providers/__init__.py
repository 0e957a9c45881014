"""Real credentials: one module per kind of system (``postgresql``; ``mysql``, ``redis``, ``rabbitmq``, ``ssh`` and
``webhook`` come next), each implementing the domain's ``CredentialProvider`` port, and the registry that checks the
policy's ``providers:`` against them and builds them (``kinds``, ``pool``)."""
