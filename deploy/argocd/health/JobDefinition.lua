-- Argo CD health of a Barge JobDefinition: Progressing until its spec is registered as a
-- revision, Suspended when INACTIVE, Degraded when it cannot be registered, Healthy otherwise.
local hs = {}
if obj.status == nil or obj.status.revision == nil or obj.status.revision == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for Barge to register the first revision"
  return hs
end
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Registered" and c.status == "False" then
      hs.status = "Degraded"
      hs.message = c.message
      return hs
    end
  end
end
if obj.spec ~= nil and obj.spec.state == "INACTIVE" then
  hs.status = "Suspended"
  hs.message = "INACTIVE: no new job may use it"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Registering the latest change"
  return hs
end
hs.status = "Healthy"
hs.message = string.format("Revision %d", obj.status.revision)
return hs
