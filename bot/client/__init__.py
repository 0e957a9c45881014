"""What a pipeline runs: ``grantbot request / release / status / verify`` (DESIGN.md "The pipeline client").

This room speaks only the HTTP contract. It never imports the store, the domain's use cases, the web app or the
composition root; the one thing it shares with the server is ``bot.signing`` (the HMAC signature both sides compute).

- ``exits``: the exit codes of the contract;
- ``credentials``: how each call is authenticated (HMAC, or a CI platform's OIDC identity token) and the CI job's
  context (run URL, commit, repository);
- ``transport``: signed calls with bounded retries (connection errors, 429/502/503/504 honouring ``Retry-After``);
- ``access``: asking, waiting for the decision, recovering a lost hand-over (``reissue``), releasing;
- ``outputs``: ``--output json|token|env|github``;
- ``verifier`` and ``middleware``: checking grantbot's tokens in a resource server;
- ``commands``: the argparse side of the commands, wired into ``grantbot`` by ``bot.cli``.
"""
