"""Fixed identifiers of the emulator's default demo tenant.

These are the only emulator names the broker side may import (for the ``dev``
command and tests, to know *which* demo identities exist). They are data, not
protocol code.
"""

TENANT_ID = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"
OTHER_TENANT_ID = "c0ffee00-1234-4abc-8def-0123456789ab"

BLUEPRINT_APP_ID = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
BLUEPRINT_SECRET = "demo-blueprint-secret-do-not-use-in-production"

AGENT_1_ID = "a1a1a1a1-0001-4e6f-9a1b-1c2d3e4f5a61"
AGENT_2_ID = "a2a2a2a2-0002-4e6f-9a1b-1c2d3e4f5a62"

AGENT_USER_UPN = "agent-user-1@demo.example"
AGENT_USER_OID = "b1b1b1b1-0001-4c3d-8e9f-0a1b2c3d4e51"

DEMO_USER_UPN = "alice@demo.example"
DEMO_USER_OID = "c1c1c1c1-0001-4d5e-9f0a-1b2c3d4e5f61"
DEMO_USER_2_UPN = "bob@demo.example"
DEMO_USER_2_OID = "c2c2c2c2-0002-4d5e-9f0a-1b2c3d4e5f62"

MI_CLIENT_ID = "d1d1d1d1-0001-4a2b-8c3d-4e5f6a7b8c91"
MI_PRINCIPAL_ID = "d2d2d2d2-0002-4a2b-8c3d-4e5f6a7b8c92"

WORKLOAD_SUBJECT = "system:serviceaccount:agents:agent-sa"

GRAPH_RESOURCE = "https://graph.microsoft.com"
DEMO_API_RESOURCE = "api://demo-downstream"

# --- added by the emulator (data only) ---
DEMO_API_APP_ID = "e1e1e1e1-0001-4b2c-9d3e-4f5a6b7c8d91"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
TOKEN_EXCHANGE_APP_ID = "fb60f99c-7a34-4190-8149-302f77469936"
TOKEN_EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"
TOKEN_EXCHANGE_RESOURCE = "api://AzureADTokenExchange"
BLUEPRINT_SP_OID = "3b6e9d21-0000-4c7e-b152-6f0a9e3d7c59"
BLUEPRINT_SCOPE = "access_agent"
PFX_PASSWORD = "demo-pfx-password"
KUBERNETES_ISSUER = "https://kubernetes.emulator.local/oidc"

# --- demo downstream APIs served by the emulator (demo_api.py), under its HTTPS URL ---
DEMO_GRAPH_PATH = "/_demo/graph/v1.0/"
DEMO_API_PATH = "/_demo/api/"
