"""The audit trail of token decisions (docs/audit.md): pure record builders and the writer."""

from agent_token_broker.audit.record import Outcome, decision_record, hits_record
from agent_token_broker.audit.trail import AuditTrail

__all__ = ["AuditTrail", "Outcome", "decision_record", "hits_record"]
