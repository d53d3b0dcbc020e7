//! Migrations run as Kubernetes Jobs made from a CronJob template, as
//! `kubectl create job --from=cronjob/NAME` does.
//!
//! Teams keep their migration command (image, arguments, secrets) in a
//! suspended CronJob; [`MigrationJobRunner::run`] creates one Job from its
//! `jobTemplate`, waits for it to finish through a watch, fetches the last
//! lines of its pod's log, and maps a failure to a typed error that carries
//! those lines. [`MigrationJobHook`] runs an expand CronJob before a rollout
//! deploys and a contract CronJob after the old release is gone, so the
//! expand/contract pattern works with migration tools that are not Atlas's
//! own (Flyway, Liquibase, a framework's migrate command).
//!
//! Runs are idempotent: the Job's name is derived from a key the caller
//! gives (the hook uses the rollout id and the hook point), so a resumed
//! engine that calls the hook again finds the Job it already made and waits
//! for it (or reports how it ended) instead of migrating twice.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::hooks::{HookContext, RolloutHook};
use atlas_core::{Error, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use tracing::{debug, info, warn};

use crate::error::map_kube_error;
use crate::names::check_name;

/// Default time a Job may take before the run fails: 30 minutes.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Default number of log lines kept from the Job's pod: 50.
pub const DEFAULT_LOG_LINES: i64 = 50;

/// The annotation kubectl puts on a Job made by hand from a CronJob.
pub const INSTANTIATE_ANNOTATION: &str = "cronjob.kubernetes.io/instantiate";

/// The longest name Kubernetes accepts for a Job whose pods carry its name
/// as a label value.
const MAX_JOB_NAME: usize = 63;

/// How one Job run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    /// The Job's name.
    pub job: String,
    /// Whether this call created the Job (false: it existed already, from an
    /// earlier call with the same key).
    pub created: bool,
    /// The last lines of its pod's log (empty when no pod was found).
    pub logs: String,
}

/// Runs Jobs from one CronJob template in one namespace.
#[derive(Clone)]
pub struct MigrationJobRunner {
    client: Client,
    namespace: String,
    cronjob: String,
    timeout: Duration,
    log_lines: i64,
}

impl fmt::Debug for MigrationJobRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrationJobRunner")
            .field("namespace", &self.namespace)
            .field("cronjob", &self.cronjob)
            .field("timeout", &self.timeout)
            .field("log_lines", &self.log_lines)
            .finish()
    }
}

impl MigrationJobRunner {
    /// A runner for the CronJob `cronjob` in `namespace`, with
    /// [`DEFAULT_JOB_TIMEOUT`] and [`DEFAULT_LOG_LINES`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a name is not a DNS-1123 label.
    pub fn new(client: Client, namespace: &str, cronjob: &str) -> Result<Self> {
        check_name("job.namespace", namespace)?;
        check_name("job.cronjob", cronjob)?;
        Ok(MigrationJobRunner {
            client,
            namespace: namespace.to_owned(),
            cronjob: cronjob.to_owned(),
            timeout: DEFAULT_JOB_TIMEOUT,
            log_lines: DEFAULT_LOG_LINES,
        })
    }

    /// How long a Job may take before the run fails with
    /// [`Error::Deadline`] (the Job itself is left to its own
    /// `activeDeadlineSeconds`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many log lines to keep from the Job's pod.
    pub fn with_log_lines(mut self, lines: i64) -> Self {
        self.log_lines = lines.max(1);
        self
    }

    /// The Job name a run with `key` uses: see [`job_name`].
    pub fn job_name(&self, key: &str) -> String {
        job_name(&self.cronjob, key)
    }

    /// Creates the Job for `key` from the CronJob's template (or finds the
    /// one an earlier call created), waits until it completes or fails, and
    /// returns its pod's last log lines.
    ///
    /// # Errors
    /// - [`Error::NotFound`] when the CronJob does not exist;
    /// - [`Error::Backend`] when the Job failed, with its reason and the log
    ///   lines in the message;
    /// - [`Error::Deadline`] when it did not finish within the timeout;
    /// - API errors as `map_kube_error` maps them.
    #[tracing::instrument(skip(self), fields(namespace = %self.namespace, cronjob = %self.cronjob))]
    pub async fn run(&self, key: &str) -> Result<JobRun> {
        let name = self.job_name(key);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let (job, created) = match jobs
            .get_opt(&name)
            .await
            .map_err(|e| map_kube_error(&self.what(&name, "reading"), e))?
        {
            Some(job) => {
                info!(job = %name, "the Job of this run exists already; waiting for it");
                (job, false)
            }
            None => (self.create(&jobs, &name).await?, true),
        };
        let finished = tokio::time::timeout(self.timeout, self.wait(&jobs, job))
            .await
            .map_err(|_| {
                Error::deadline(
                    format!("migration Job {}/{name}", self.namespace),
                    self.timeout,
                )
            })??;
        let logs = self.logs(&name).await;
        match finished {
            Finished::Complete => {
                info!(job = %name, "migration Job completed");
                Ok(JobRun {
                    job: name,
                    created,
                    logs,
                })
            }
            Finished::Failed(reason) => {
                warn!(job = %name, %reason, "migration Job failed");
                Err(Error::backend(
                    crate::BACKEND,
                    format!(
                        "migration Job {}/{name} failed: {reason}; last log lines:\n{logs}",
                        self.namespace
                    ),
                ))
            }
        }
    }

    fn what(&self, job: &str, doing: &str) -> String {
        format!("{doing} Job {}/{job}", self.namespace)
    }

    async fn create(&self, jobs: &Api<Job>, name: &str) -> Result<Job> {
        let cronjobs: Api<CronJob> = Api::namespaced(self.client.clone(), &self.namespace);
        let cronjob = cronjobs.get(&self.cronjob).await.map_err(|e| {
            map_kube_error(
                &format!("reading CronJob {}/{}", self.namespace, self.cronjob),
                e,
            )
        })?;
        let job = job_from_cronjob(&cronjob, name)?;
        debug!(job = %name, "creating the migration Job");
        match jobs.create(&PostParams::default(), &job).await {
            Ok(job) => Ok(job),
            // Another runner created it between our read and our create:
            // wait for that one.
            Err(kube::Error::Api(status)) if status.code == 409 => jobs
                .get(name)
                .await
                .map_err(|e| map_kube_error(&self.what(name, "reading"), e)),
            Err(e) => Err(map_kube_error(&self.what(name, "creating"), e)),
        }
    }

    /// Follows the Job with a watch from the version it was read at, until
    /// it finishes; a watch the server closes is resumed from a fresh read.
    async fn wait(&self, jobs: &Api<Job>, mut job: Job) -> Result<Finished> {
        let name = job.metadata.name.clone().unwrap_or_default();
        loop {
            if let Some(done) = finished(&job) {
                return Ok(done);
            }
            let version = job.metadata.resource_version.clone().unwrap_or_default();
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(290);
            let mut events = jobs
                .watch(&params, &version)
                .await
                .map_err(|e| map_kube_error(&self.what(&name, "watching"), e))?
                .boxed();
            while let Some(event) = events
                .try_next()
                .await
                .map_err(|e| map_kube_error(&self.what(&name, "watching"), e))?
            {
                match event {
                    WatchEvent::Added(j) | WatchEvent::Modified(j) => {
                        if let Some(done) = finished(&j) {
                            return Ok(done);
                        }
                    }
                    WatchEvent::Deleted(_) => {
                        return Ok(Finished::Failed(
                            "the Job was deleted before it finished".to_owned(),
                        ));
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(e) => {
                        debug!(code = e.code, message = %e.message, "watch ended; reading again");
                        break;
                    }
                }
            }
            job = jobs
                .get(&name)
                .await
                .map_err(|e| map_kube_error(&self.what(&name, "reading"), e))?;
        }
    }

    /// The newest pod's last log lines; a failure to read them is logged and
    /// leaves the text empty (the Job's outcome matters more).
    async fn logs(&self, job: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let listed = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await;
        let newest = match listed {
            Ok(list) => list
                .items
                .into_iter()
                .max_by_key(|p| p.metadata.creation_timestamp.clone()),
            Err(e) => {
                warn!(%job, error = %e, "cannot list the Job's pods for their logs");
                None
            }
        };
        let Some(name) = newest.and_then(|p| p.metadata.name) else {
            return String::new();
        };
        let params = LogParams {
            tail_lines: Some(self.log_lines),
            ..LogParams::default()
        };
        match pods.logs(&name, &params).await {
            Ok(text) => text,
            Err(e) => {
                warn!(%job, pod = %name, error = %e, "cannot read the Job's log");
                String::new()
            }
        }
    }
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Finished {
    Complete,
    Failed(String),
}

/// A Job is done when its `Complete` or `Failed` condition is true.
fn finished(job: &Job) -> Option<Finished> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    for c in conditions {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return Some(Finished::Complete),
            "Failed" => {
                let reason = c.reason.clone().unwrap_or_else(|| "Failed".to_owned());
                let message = c.message.clone().unwrap_or_default();
                return Some(Finished::Failed(
                    format!("{reason} {message}").trim().to_owned(),
                ));
            }
            _ => {}
        }
    }
    None
}

/// The Job `kubectl create job NAME --from=cronjob/CRONJOB` makes: the
/// template's metadata and spec, the manual-instantiation annotation, and
/// the CronJob as controlling owner (so deleting the CronJob deletes it).
///
/// # Errors
/// [`Error::InvalidInput`] when the CronJob has no job template or no uid.
pub fn job_from_cronjob(cronjob: &CronJob, name: &str) -> Result<Job> {
    let cron_name = cronjob.metadata.name.clone().unwrap_or_default();
    let field = format!("CronJob {cron_name}");
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| &s.job_template)
        .ok_or_else(|| Error::invalid(field.clone(), "has no spec.jobTemplate"))?;
    let uid = cronjob
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::invalid(field, "has no metadata.uid (read it from the API)"))?;
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> =
        template_meta.annotations.clone().unwrap_or_default();
    annotations.insert(INSTANTIATE_ANNOTATION.to_owned(), "manual".to_owned());
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cronjob.metadata.namespace.clone(),
            labels: template_meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "CronJob".to_owned(),
                name: cron_name,
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

/// The Job name a run of `cronjob` with `key` uses: the CronJob's name, a
/// dash and a 10-hex-digit hash of the key, within Kubernetes' 63
/// characters. The same key always gives the same name, which is what makes
/// a repeated run find the Job of the first.
pub fn job_name(cronjob: &str, key: &str) -> String {
    let hash = format!("{:010x}", fnv1a(key.as_bytes()) & 0xff_ffff_ffff);
    let room = MAX_JOB_NAME - hash.len() - 1;
    let base: String = cronjob.chars().take(room).collect();
    format!("{}-{hash}", base.trim_end_matches('-'))
}

/// A rollout hook that runs an expand CronJob before the new release
/// deploys and a contract CronJob after the old release is gone.
#[derive(Debug, Clone, Default)]
pub struct MigrationJobHook {
    expand: Option<MigrationJobRunner>,
    contract: Option<MigrationJobRunner>,
}

impl MigrationJobHook {
    /// A hook that runs nothing until given runners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `runner` before the new release's slot starts; a failure rolls
    /// the rollout back before any new replica runs.
    pub fn expand(mut self, runner: MigrationJobRunner) -> Self {
        self.expand = Some(runner);
        self
    }

    /// Runs `runner` once no replica of the old release is left; a failure
    /// stops the engine, and a resumed engine runs (or finds) it again.
    pub fn contract(mut self, runner: MigrationJobRunner) -> Self {
        self.contract = Some(runner);
        self
    }

    async fn run(&self, runner: Option<&MigrationJobRunner>, ctx: &HookContext) -> Result<()> {
        let Some(runner) = runner else {
            return Ok(());
        };
        let key = format!("{}/{}/{}", ctx.service, ctx.rollout_id, ctx.point);
        let run = runner.run(&key).await?;
        info!(service = %ctx.service, point = %ctx.point, job = %run.job, "migration Job done");
        Ok(())
    }
}

#[async_trait]
impl RolloutHook for MigrationJobHook {
    fn name(&self) -> &str {
        "migration-jobs"
    }

    async fn before_deploy(&self, ctx: &HookContext) -> Result<()> {
        self.run(self.expand.as_ref(), ctx).await
    }

    async fn after_scale_down(&self, ctx: &HookContext) -> Result<()> {
        self.run(self.contract.as_ref(), ctx).await
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
