//! TagResource, UntagResource and ListTagsForResource (`POST`, `DELETE` and `GET
//! /v1/tags/{resourceArn}`), on the tags `tags` keeps.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::definitions::{self, Empty};
use super::tags::{ANNOTATION_TAGS, Tags, annotated, validate};
use super::{ApiError, ApiResult, Context, FIELD_MANAGER, Principal, environments, jobs, names};
use crate::api::{BatchJob, ComputeEnvironment, JobDefinition, JobQueue};

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TagInput {
    #[serde(default)]
    pub tags: Tags,
}

#[derive(Serialize, Debug)]
pub struct TagsOutput {
    tags: Tags,
}

/// A resource an ARN names, as the key may see it.
enum Tagged {
    Job(std::sync::Arc<BatchJob>),
    Definition(std::sync::Arc<JobDefinition>),
    Queue(std::sync::Arc<JobQueue>),
    Environment(std::sync::Arc<ComputeEnvironment>),
}

fn unknown(arn: &str) -> ApiError {
    ApiError::client(format!("Resource {arn} does not exist"))
}

fn resolve(ctx: &Context, who: &Principal, arn: &str) -> ApiResult<Tagged> {
    let prefix = ctx.arns.of("", "");
    let rest = arn.strip_prefix(prefix.trim_end_matches('/')).ok_or_else(|| {
        ApiError::client(format!("resourceArn {arn:?} is not an ARN of this endpoint ({prefix}…)"))
    })?;
    let (kind, name) = rest.split_once('/').ok_or_else(|| unknown(arn))?;
    Ok(match kind {
        "job" => Tagged::Job(jobs::job(ctx, who, name).ok_or_else(|| unknown(arn))?),
        "job-definition" => {
            Tagged::Definition(definitions::find(ctx, &who.namespace, name).map_err(|_| unknown(arn))?.object)
        }
        "job-queue" => Tagged::Queue(
            names::find(&ctx.stores.queues, name)
                .filter(|q| jobs::visible_queue(ctx, who, q))
                .ok_or_else(|| unknown(arn))?,
        ),
        "compute-environment" => Tagged::Environment(
            names::find(&ctx.stores.compute_environments, name)
                .filter(|c| environments::visible_environment(ctx, who, c))
                .ok_or_else(|| unknown(arn))?,
        ),
        _ => return Err(ApiError::client(format!("{arn}: Barge does not tag {kind} resources"))),
    })
}

fn current(ctx: &Context, r: &Tagged) -> Tags {
    match r {
        Tagged::Job(j) => j.spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Tagged::Definition(d) => annotated(d.as_ref()).unwrap_or_else(|| {
            let ns = d.namespace().unwrap_or_default();
            ctx.stores.definitions.latest(&ns, &d.name_any()).map(|(_, s)| s.tags.clone()).unwrap_or_default()
        }),
        Tagged::Queue(q) => annotated(q.as_ref()).unwrap_or_default(),
        Tagged::Environment(c) => annotated(c.as_ref()).unwrap_or_default(),
    }
}

pub fn list(ctx: &Context, who: &Principal, arn: &str) -> ApiResult<TagsOutput> {
    let r = resolve(ctx, who, arn)?;
    Ok(TagsOutput { tags: current(ctx, &r) })
}

/// What a tag change does to the tags: adds (or replaces) some, removes others.
pub enum Change {
    Add(Tags),
    Remove(Vec<String>),
}

pub async fn change(ctx: &Context, who: &Principal, arn: &str, change: Change) -> ApiResult<Empty> {
    let r = resolve(ctx, who, arn)?;
    if matches!(r, Tagged::Queue(_) | Tagged::Environment(_)) {
        super::admin::admin_only(who, &format!("Tagging {arn}"))?;
    }
    let mut tags = current(ctx, &r);
    let json_change: serde_json::Map<String, serde_json::Value> = match &change {
        Change::Add(add) => {
            validate(add)?;
            tags.extend(add.clone());
            add.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect()
        }
        Change::Remove(keys) => {
            for k in keys {
                tags.remove(k);
            }
            keys.iter().map(|k| (k.clone(), serde_json::Value::Null)).collect()
        }
    };
    validate(&tags)?;
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let annotation = || serde_json::json!({"metadata": {"annotations": {ANNOTATION_TAGS: serde_json::to_string(&tags).expect("tags serialise")}}});
    let failed = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 404 => unknown(arn),
        e => ApiError::from_kube(e, arn),
    };
    match &r {
        Tagged::Job(j) => {
            let api: Api<BatchJob> = Api::namespaced(ctx.client.clone(), &who.namespace);
            let patch = serde_json::json!({"spec": {"tags": json_change}});
            let patched = api.patch(&j.name_any(), &params, &Patch::Merge(&patch)).await.map_err(failed)?;
            let (key, generation) = (ObjectRef::from_obj(&patched), patched.meta().generation);
            ctx.stores
                .caught_up(|s| s.jobs.get(&key).is_some_and(|j| j.meta().generation >= generation))
                .await;
        }
        Tagged::Definition(d) => {
            let api: Api<JobDefinition> = Api::namespaced(ctx.client.clone(), &who.namespace);
            let patched =
                api.patch(&d.name_any(), &params, &Patch::Merge(&annotation())).await.map_err(failed)?;
            let key = ObjectRef::from_obj(&patched);
            ctx.stores
                .caught_up(|s| {
                    s.definitions
                        .definitions
                        .get(&key)
                        .is_some_and(|d| annotated(d.as_ref()).as_ref() == Some(&tags))
                })
                .await;
        }
        Tagged::Queue(q) => {
            let api: Api<JobQueue> = Api::all(ctx.client.clone());
            api.patch(&q.name_any(), &params, &Patch::Merge(&annotation())).await.map_err(failed)?;
            let key = ObjectRef::from_obj(q.as_ref());
            ctx.stores
                .caught_up(|s| {
                    s.queues.get(&key).is_some_and(|q| annotated(q.as_ref()).as_ref() == Some(&tags))
                })
                .await;
        }
        Tagged::Environment(c) => {
            let api: Api<ComputeEnvironment> = Api::all(ctx.client.clone());
            api.patch(&c.name_any(), &params, &Patch::Merge(&annotation())).await.map_err(failed)?;
            let key = ObjectRef::from_obj(c.as_ref());
            ctx.stores
                .caught_up(|s| {
                    s.compute_environments
                        .get(&key)
                        .is_some_and(|c| annotated(c.as_ref()).as_ref() == Some(&tags))
                })
                .await;
        }
    }
    Ok(Empty {})
}

/// The `tagKeys` of an UntagResource query string.
pub fn tag_keys(query: Option<&str>) -> ApiResult<Vec<String>> {
    let keys: Vec<String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "tagKeys")
        .map(|(_, v)| v.into_owned())
        .collect();
    if keys.is_empty() {
        return Err(ApiError::client("tagKeys is required: name at least one tag key to remove"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untag_reads_every_tag_key_of_the_query() {
        assert_eq!(tag_keys(Some("tagKeys=a&tagKeys=cost%20centre")).unwrap(), ["a", "cost centre"]);
        assert!(tag_keys(None).is_err());
    }
}
