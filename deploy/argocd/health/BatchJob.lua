-- Argo CD health of a Barge BatchJob: Healthy once it SUCCEEDED, Degraded when it FAILED or
-- can never run as written (MISCONFIGURATION), Progressing while it waits or runs.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for Barge to accept the job"
  return hs
end
local phase = obj.status.phase
local reason = obj.status.statusReason or ""
if phase == "SUCCEEDED" then
  hs.status = "Healthy"
elseif phase == "FAILED" then
  hs.status = "Degraded"
elseif phase == "RUNNABLE" and string.find(reason, "MISCONFIGURATION", 1, true) == 1 then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
if reason ~= "" then
  hs.message = phase .. ": " .. reason
else
  hs.message = phase
end
return hs
