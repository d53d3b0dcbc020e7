//! Handing replicas from one owner to the next: their records, letting go
//! of them, and adopting them. See *Detached mode* and *Adoption* in the
//! [module documentation](super).

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};

use atlas_core::{Error, Result};
use tracing::Instrument;

use super::record::{AdoptReport, ReplicaRecord, process_start_time};
use super::replica::{Launch, Replica};
use super::{
    MAX_REPLICAS, ProcessWorkloads, SlotRecord, State, free_port, validate_release,
    validate_replicas,
};

impl ProcessWorkloads {
    /// What a later owner needs to [`adopt`](Self::adopt) the replicas:
    /// one record per replica of every slot, and one per replica still
    /// being stopped (marked [`stopping`](ReplicaRecord::stopping), so that
    /// a later owner finishes stopping it if this one could not). Records
    /// hold the releases' environment, which may hold secrets: keep them
    /// where only the owner can read them.
    pub async fn records(&self) -> Vec<ReplicaRecord> {
        let state = self.state.lock().await;
        self.records_of(&state)
    }

    fn records_of(&self, state: &State) -> Vec<ReplicaRecord> {
        let log_path = |r: &Replica| self.ctx.config.log_path(r.name());
        state
            .slots
            .values()
            .flat_map(|s| {
                s.replicas
                    .values()
                    .map(|r| r.record(s.desired, log_path(r)))
            })
            .chain(state.draining.iter().map(|r| r.record(0, log_path(r))))
            .collect()
    }

    /// Lets go of every replica, leaving it running, so that the owner can
    /// exit (to be restarted or upgraded) and a new owner
    /// [`adopt`](Self::adopt) them. Returns their records, as
    /// [`records`](Self::records) would, taken after each watcher has
    /// stopped, so no restart can slip in after. Replicas being stopped
    /// (already sent SIGTERM) are let go of too, recorded as
    /// [`stopping`](ReplicaRecord::stopping): the next owner finishes
    /// stopping those still running, and this one need not wait out their
    /// grace period. Afterwards deploys and scales are refused, as after
    /// [`shutdown`](Self::shutdown).
    ///
    /// # Errors
    ///
    /// [`Error::Precondition`] unless the workloads are
    /// [`detached`](super::ProcessWorkloadsBuilder::detached) (attached replicas
    /// die with their owner whatever it does).
    pub async fn release_all(&self) -> Result<Vec<ReplicaRecord>> {
        if !self.ctx.config.detached {
            return Err(Error::precondition(
                "only detached process workloads can release their replicas",
            ));
        }
        let (replicas, draining) = {
            let mut state = self.state.lock().await;
            state.closed = true;
            let replicas: Vec<(u32, Replica)> = std::mem::take(&mut state.slots)
                .into_values()
                .flat_map(|s| s.replicas.into_values().map(move |r| (s.desired, r)))
                .collect();
            (replicas, std::mem::take(&mut state.draining))
        };
        tracing::info!(
            replicas = replicas.len(),
            draining = draining.len(),
            "releasing replicas; they keep running"
        );
        let mut records = Vec::with_capacity(replicas.len());
        for (desired, r) in replicas {
            let log_path = self.ctx.config.log_path(r.name());
            records.push(r.release(&self.ctx, desired, log_path).await);
        }
        for r in draining {
            let log_path = self.ctx.config.log_path(r.name());
            records.push(r.release(&self.ctx, 0, log_path).await);
        }
        Ok(records)
    }

    /// Takes over the replicas an earlier owner left running (a
    /// [`detached`](super::ProcessWorkloadsBuilder::detached) one that was
    /// restarted, upgraded, or killed), from the records it kept
    /// ([`records`](Self::records), [`release_all`](Self::release_all)).
    ///
    /// For each record: if its pid runs and has the recorded start time,
    /// the process is adopted — watched for its exit (by its start time in
    /// `/proc` at every poll interval: it is not our child, so it cannot be
    /// waited for and its exit status stays unknown), probed for
    /// readiness, and stopped through its process group like any other.
    /// Otherwise (gone, or its pid now belongs to another process) a fresh
    /// replica of the release starts on the recorded port, or on a new one
    /// if another program holds it (`moved` in the report). The slot takes
    /// the records' release and replica count; afterwards status, scale,
    /// deploy, stop and the restart policy treat adopted replicas as any
    /// other. Indices missing from the records are not started: deploying
    /// the same release again fills them in.
    ///
    /// A record is refused (listed in `failed`) when its release is
    /// invalid, when its slot already runs another release here or another
    /// record of the same slot names another release, or when its index is
    /// already running.
    ///
    /// # Errors
    ///
    /// [`Error::Precondition`] after [`shutdown`](Self::shutdown) or
    /// [`release_all`](Self::release_all).
    ///
    /// # Example
    ///
    /// A supervisor that keeps its replicas across its own restarts:
    ///
    /// ```no_run
    /// use atlas_local::process::{ProcessWorkloads, ReplicaRecord, RestartPolicy};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let workloads = ProcessWorkloads::builder()
    ///     .detached(true)
    ///     .restart(RestartPolicy::on_failure())
    ///     .build()?;
    /// // Records the previous run kept (a 0600 file: they hold the env).
    /// let records: Vec<ReplicaRecord> =
    ///     serde_json::from_slice(&std::fs::read("/var/lib/atlas/replicas.json")?)?;
    /// let report = workloads.adopt(records).await?;
    /// println!("adopted {:?}, started afresh {:?}", report.adopted, report.restarted);
    /// // ... deploy, scale, write workloads.records() after each change ...
    /// // On a planned exit, leave the replicas running for the next run:
    /// let records = workloads.release_all().await?;
    /// use std::os::unix::fs::OpenOptionsExt;
    /// let file = std::fs::OpenOptions::new()
    ///     .write(true)
    ///     .create(true)
    ///     .truncate(true)
    ///     .mode(0o600)
    ///     .open("/var/lib/atlas/replicas.json")?;
    /// serde_json::to_writer(file, &records)?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn adopt(&self, records: Vec<ReplicaRecord>) -> Result<AdoptReport> {
        let span = tracing::info_span!("process.adopt", records = records.len());
        async {
            let mut guard = self.state.lock().await;
            guard.check_open()?;
            guard.prune_draining();
            let mut ports = guard.ports_in_use();
            let mut report = AdoptReport::default();
            for rec in records {
                let name = rec.name();
                if rec.stopping {
                    if let Some(start_time) = rec
                        .start_time
                        .filter(|t| process_start_time(rec.pid) == Some(*t))
                    {
                        ports.insert(rec.port);
                        let r = Replica::adopt(
                            launch_of(&rec),
                            rec.pid,
                            start_time,
                            rec.restarts,
                            &self.ctx,
                        );
                        tracing::info!(replica = %name, pid = rec.pid, "stopping an adopted replica an earlier owner was stopping");
                        r.request_stop();
                        guard.draining.push(r);
                        report.stopping.push(name);
                    }
                    continue;
                }
                let key = (rec.service.clone(), rec.slot);
                let record = guard.slots.entry(key).or_default();
                match self.adopt_one(record, rec, &mut ports) {
                    Ok(Adoption::Adopted) => report.adopted.push(name),
                    Ok(Adoption::Started) => report.restarted.push(name),
                    Ok(Adoption::Moved { from, to }) => {
                        report.restarted.push(name.clone());
                        report.moved.push((name, from, to));
                    }
                    Err(e) => {
                        tracing::warn!(replica = %name, error = %e, "replica record refused");
                        report.failed.push((name, e.to_string()));
                    }
                }
            }
            guard.slots.retain(|_, s| s.release.is_some());
            tracing::info!(
                adopted = report.adopted.len(),
                restarted = report.restarted.len(),
                moved = report.moved.len(),
                stopping = report.stopping.len(),
                failed = report.failed.len(),
                "replicas adopted"
            );
            Ok(report)
        }
        .instrument(span)
        .await
    }

    fn adopt_one(
        &self,
        record: &mut SlotRecord,
        rec: ReplicaRecord,
        ports: &mut HashSet<u16>,
    ) -> Result<Adoption> {
        validate_release(&rec.release)?;
        validate_replicas(rec.replicas)?;
        if rec.index >= MAX_REPLICAS {
            return Err(Error::invalid(
                "record.index",
                format!("must be below {MAX_REPLICAS}, got {}", rec.index),
            ));
        }
        if let Some(release) = &record.release
            && *release != rec.release
        {
            return Err(Error::conflict(format!(
                "slot {} of {} already runs version {}, not {}",
                rec.slot, rec.service, release.version, rec.release.version
            )));
        }
        if record.replicas.contains_key(&rec.index) {
            return Err(Error::conflict(format!(
                "replica {} already runs here",
                rec.name()
            )));
        }
        let running = rec
            .start_time
            .filter(|t| process_start_time(rec.pid) == Some(*t));
        let mut launch = launch_of(&rec);
        let (replica, adoption) = if let Some(start_time) = running {
            ports.insert(rec.port);
            let r = Replica::adopt(launch, rec.pid, start_time, rec.restarts, &self.ctx);
            (r, Adoption::Adopted)
        } else {
            let free = !ports.contains(&rec.port)
                && TcpListener::bind((Ipv4Addr::LOCALHOST, rec.port)).is_ok();
            let adoption = if free {
                Adoption::Started
            } else {
                let to = free_port(ports)?;
                launch.port = to;
                Adoption::Moved { from: rec.port, to }
            };
            tracing::info!(
                replica = %rec.name(),
                pid = rec.pid,
                port = launch.port,
                "recorded process is gone; starting a fresh replica"
            );
            ports.insert(launch.port);
            let r = Replica::spawn(launch, &self.ctx, rec.restarts.saturating_add(1))?;
            (r, adoption)
        };
        record.replicas.insert(rec.index, replica);
        record.desired = record.desired.max(rec.replicas);
        record.release.get_or_insert(rec.release);
        Ok(adoption)
    }
}

fn launch_of(rec: &ReplicaRecord) -> Launch {
    Launch {
        service: rec.service.clone(),
        slot: rec.slot,
        index: rec.index,
        release: rec.release.clone(),
        port: rec.port,
    }
}

/// What [`ProcessWorkloads::adopt_one`] did.
enum Adoption {
    Adopted,
    Started,
    Moved { from: u16, to: u16 },
}
