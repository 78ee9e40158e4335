-- Argo CD health of a Barge ComputeEnvironment: Suspended when DISABLED, Degraded when not
-- Ready (a provider problem, unknown instance types), Progressing while nodes are coming,
-- Healthy otherwise.
local hs = {}
if obj.spec ~= nil and obj.spec.state == "DISABLED" then
  hs.status = "Suspended"
  hs.message = "The compute environment is DISABLED"
  return hs
end
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for Barge to report on the compute environment"
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" and c.status ~= "True" then
    hs.status = "Degraded"
    hs.message = c.message
    return hs
  end
end
local nodes = obj.status.nodes or 0
local ready = obj.status.readyNodes or 0
if ready < nodes then
  hs.status = "Progressing"
  hs.message = string.format("%d of %d nodes ready", ready, nodes)
  return hs
end
hs.status = "Healthy"
hs.message = obj.status.message or ""
return hs
