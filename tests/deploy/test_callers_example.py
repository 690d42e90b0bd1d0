"""deploy/callers: the per-caller example (issue's Kubernetes example) is a kustomize overlay of
deploy/kubernetes whose patches are valid, whose keys the broker accepts, and whose uids are the
ones the policy names: the agent (10010) gets its agent, the tool sandbox (10020) nothing."""

from __future__ import annotations

import kubernetes_validate

from agent_token_broker.api.caller_policy import compile_table, match
from agent_token_broker.callers import CallerIdentity
from tests.deploy.helpers import AGENT_CONTAINER, ROOT, broker_env, container, yaml_documents
from tests.deploy.test_config_contract import _load_exactly
from tests.deploy.test_manifests import KUBERNETES_VERSION

OVERLAY = ROOT / "deploy" / "callers"


def _patch(name: str) -> dict:  # type: ignore[type-arg]
    (doc,) = yaml_documents(OVERLAY / name)
    return doc


def test_overlay_uses_the_base_and_its_patches() -> None:
    (kustomization,) = yaml_documents(OVERLAY / "kustomization.yaml")
    assert kustomization["resources"] == ["../kubernetes"]
    assert [p["path"] for p in kustomization["patches"]] == ["callers-config.yaml", "callers-deployment.yaml"]
    assert all((OVERLAY / p["path"]).exists() for p in kustomization["patches"])


def test_policy_of_the_example_matches_its_containers() -> None:
    env = {**broker_env(), **_patch("callers-config.yaml")["data"]}
    settings = _load_exactly(env)
    table = compile_table(settings)
    assert table.require_match
    pod = _patch("callers-deployment.yaml")["spec"]["template"]["spec"]
    uids = {c["name"]: c["securityContext"]["runAsUser"] for c in pod["containers"]}
    agent = match(table, CallerIdentity("tcp", uid=uids[AGENT_CONTAINER]))
    sandbox = match(table, CallerIdentity("tcp", uid=uids["tool-sandbox"]))
    assert agent is not None and agent.agents == frozenset({"00000000-0000-0000-0000-000000000000"})
    assert sandbox is not None and sandbox.allows_nothing
    broker_uid = container("agent-token-broker")["securityContext"]["runAsUser"]
    assert len({broker_uid, *uids.values()}) == 3, "the broker, the agent and the sandbox: three uids"


def test_sandbox_container_is_a_valid_hardened_container() -> None:
    sandbox = next(c for c in _patch("callers-deployment.yaml")["spec"]["template"]["spec"]["containers"]
                   if c["name"] == "tool-sandbox")  # fmt: skip
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [sandbox]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    ctx = sandbox["securityContext"]
    assert ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"] and ctx["capabilities"]["drop"] == ["ALL"]

