"""Just enough of a GitHub Actions runner and a GitLab runner to run grantbot's integrations (action.yml and
ci/gitlab/grantbot.gitlab-ci.yml) as written, on this machine, against a real grantbot.

GitHub (docs: "Metadata syntax", "Workflow commands", "Variables"): a composite action's steps run in order;
``run:`` steps with ``bash --noprofile --norc -eo pipefail`` (``shell: bash``), their ``${{ inputs.* }}`` and
``${{ steps.*.outputs.* }}`` expressions substituted (any other expression fails the test: the action must stay
within what is simulated here); each step gets a fresh ``$GITHUB_OUTPUT`` and ``$GITHUB_STATE`` file, and what it
appends to ``$GITHUB_ENV`` and ``$GITHUB_PATH`` reaches every later step. The one ``uses:`` step allowed is
pyTooling/Actions/with-post-step, run as its main.js does: ``main`` with ``sh`` now, ``post`` with ``sh`` when the
job ends, with ``STATE_*`` set from what ``main`` saved.

GitLab (docs: "CI/CD YAML syntax reference"): a job ``extends:`` the template (hashes merged deeply, lists
replaced); its ``variables:`` and each ``id_tokens:`` token (minted by the caller for the declared ``aud``) are in
the environment; ``before_script`` and ``script`` run in one ``sh -e`` shell, ``after_script`` in another, also
after a failure.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.client_support import Ran, finish

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
WITH_POST_STEP = "pyTooling/Actions/with-post-step@"


def read_commands_file(path: Path) -> dict[str, str]:
    """``NAME=value`` and ``NAME<<DELIMITER`` … ``DELIMITER`` lines, as the runner reads $GITHUB_ENV and
    $GITHUB_OUTPUT."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    lines = iter(path.read_text().split("\n"))
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delimiter:
                    break
                body.append(inner)
            values[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


async def _shell(argv: list[str], env: dict[str, str], cwd: Path) -> Ran:
    import asyncio

    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    return await finish(proc, timeout=120)


class GithubJob:
    """A job on a simulated GitHub Actions runner; ``env`` is the runner's environment for every step."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.runner = workdir / "runner"
        self.runner.mkdir()
        self.env_file = self.runner / "env"
        self.path_file = self.runner / "path"
        self.env = {**env, "GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(self.runner),
                    "GITHUB_ENV": str(self.env_file), "GITHUB_PATH": str(self.path_file)}
        self.steps = 0
        self.log: list[tuple[str, Ran]] = []  # (step name, what it printed)
        self._posts: list[tuple[str, str, dict[str, str]]] = []

    def _step_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {**self.env, **read_commands_file(self.env_file), **extra}
        added = [line for line in self.path_file.read_text().splitlines() if line] if self.path_file.exists() else []
        env["PATH"] = os.pathsep.join([*reversed(added), env["PATH"]])
        self.steps += 1
        env["GITHUB_OUTPUT"] = str(self.runner / f"output-{self.steps}")
        env["GITHUB_STATE"] = str(self.runner / f"state-{self.steps}")
        return env

    async def run(self, name: str, script: str, env: dict[str, str] | None = None) -> Ran:
        """A ``run:`` step of the workflow (``shell: bash``)."""
        step_env = self._step_env(env or {})
        path = self.runner / f"step-{self.steps}.sh"
        path.write_text(script)
        ran = await _shell(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)], step_env, self.workdir)
        self.log.append((name, ran))
        return ran

    async def use(self, action_dir: Path, inputs: dict[str, str]) -> tuple[bool, dict[str, str]]:
        """``uses:`` the composite action in ``action_dir`` with ``inputs``; returns (success, its outputs)."""
        action = yaml.safe_load((action_dir / "action.yml").read_text())
        assert action["runs"]["using"] == "composite"
        unknown = set(inputs) - set(action["inputs"])
        assert not unknown, f"not inputs of the action: {unknown}"
        values = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
        values.update(inputs)
        missing = [n for n, spec in action["inputs"].items() if spec.get("required") and not values.get(n)]
        assert not missing, f"required inputs missing: {missing}"
        outputs: dict[str, dict[str, str]] = {}

        def evaluate(text: str) -> str:
            def one(match: re.Match) -> str:
                parts = match.group(1).split(".")
                if parts[0] == "inputs" and len(parts) == 2:
                    return values[parts[1]]
                if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
                    return outputs.get(parts[1], {}).get(parts[3], "")
                raise AssertionError(f"expression not simulated: {match.group(0)}")
            return EXPRESSION.sub(one, str(text))

        for step in action["runs"]["steps"]:
            assert "if" not in step, "conditions are not simulated"
            name = step.get("name", step.get("id", "step"))
            env = {k: evaluate(v) for k, v in (step.get("env") or {}).items()}
            env["GITHUB_ACTION_PATH"] = str(action_dir)
            if "run" in step:
                assert step["shell"] == "bash"
                ran = await self.run(name, evaluate(step["run"]), env)
            else:
                assert step["uses"].startswith(WITH_POST_STEP), step["uses"]
                with_ = {k: evaluate(v) for k, v in step["with"].items()}
                step_env = self._step_env({**env, **{f"INPUT_{k.upper()}": v for k, v in with_.items()}})
                ran = await _shell(["sh", "-c", with_["main"]], step_env, self.workdir)
                self.log.append((name, ran))
                state = read_commands_file(Path(step_env["GITHUB_STATE"]))
                self._posts.append((f"Post {name}", with_["post"],
                                    {**env, "STATE_POST": "true", **{f"STATE_{k}": v for k, v in state.items()}}))
            if "id" in step:
                outputs[step["id"]] = read_commands_file(Path(self.runner / f"output-{self.steps}"))
            if ran.code != 0:
                return False, {}
        return True, {name: evaluate(spec["value"]) for name, spec in (action.get("outputs") or {}).items()}

    async def end(self) -> list[Ran]:
        """The end of the job: post steps, last registered first (whatever happened before)."""
        ran = []
        for name, script, env in reversed(self._posts):
            result = await _shell(["sh", "-c", script], self._step_env(env), self.workdir)
            self.log.append((name, result))
            ran.append(result)
        return ran


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else copy.deepcopy(value)
    return merged


class GitlabJob:
    """A job that ``extends:`` a hidden job of ``template``; ``mint(aud)`` makes the id_tokens: tokens."""

    def __init__(self, workdir: Path, env: dict[str, str], template: Path, extends: str, job: dict,
                 mint: Callable[[str], str]) -> None:
        self.workdir = workdir
        self.definition = _merge(yaml.safe_load(template.read_text())[extends], job)
        self.env = {**env, "GITLAB_CI": "true", "CI": "true"}
        self.env.update({k: str(v) for k, v in (self.definition.get("variables") or {}).items()})
        for name, spec in (self.definition.get("id_tokens") or {}).items():
            self.env[name] = mint(spec["aud"])

    def _script(self, *keys: str) -> str:
        lines = []
        for key in keys:
            entry = self.definition.get(key) or []
            lines += [entry] if isinstance(entry, str) else entry
        return "\n".join(lines)

    async def run(self) -> tuple[Ran, Ran]:
        """(before_script + script, after_script): what each printed and how it ended."""
        script = self.workdir / "job.sh"
        script.write_text(self._script("before_script", "script"))
        main = await _shell(["sh", "-e", str(script)], self.env, self.workdir)
        after = self.workdir / "after.sh"
        after.write_text(self._script("after_script"))
        return main, await _shell(["sh", "-e", str(after)], self.env, self.workdir)
