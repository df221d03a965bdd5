-- Routing counts each agent's open offers as load (see routing_candidates); without this index
-- that count scanned every conversation of the tenant, once per agent, on every routing pass.
CREATE INDEX conversations_by_offer ON conversations (tenant_id, offered_to, status);
