-- Argo CD health of a Barge JobQueue: Suspended when DISABLED, Degraded when blocked (its
-- first job cannot run and nothing runs), Healthy otherwise.
local hs = {}
if obj.spec ~= nil and obj.spec.state == "DISABLED" then
  hs.status = "Suspended"
  hs.message = "The queue is DISABLED"
  return hs
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for Barge to report on the queue"
  return hs
end
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Blocked" and c.status == "True" then
      hs.status = "Degraded"
      hs.message = c.message
      return hs
    end
  end
end
hs.status = "Healthy"
local jobs = obj.status.jobs or {}
hs.message = string.format("%d runnable, %d running", jobs.runnable or 0, jobs.running or 0)
return hs
