//! The session writer: one thread that makes the session writes that happen outside a login
//! durable (a record saved after a token refresh or a step-up, sessions ended by sign-out,
//! back-channel logout, expiry, idle timeout or an admin). Proxy threads hand a write over and
//! go on; a caller that must know the write is on disk awaits its answer, which parks the task,
//! never the thread, so no fsync ever runs on a proxy worker.
//!
//! Writes that arrive while a commit is in flight are committed together in the next
//! transaction (one fsync for the batch). When a batch fails, its writes are tried one by one,
//! so one bad write fails only itself.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use super::sessions::SessionRecord;
use super::{Store, StoreError};

/// At most this many writes wait for the writer; past it a write is refused at once (the
/// caller has already changed memory, so only durability is lost, and it is logged).
const QUEUE: usize = 65_536;
/// At most this many writes go into one transaction.
const BATCH: usize = 512;

/// One session write.
#[derive(Debug, Clone)]
pub enum SessionWrite {
    /// Writes (or replaces) a session record.
    Put(Box<SessionRecord>),
    /// Deletes sessions by id.
    Delete(Vec<String>),
}

type Reply = tokio::sync::oneshot::Sender<Result<(), StoreError>>;

struct Job {
    write: SessionWrite,
    reply: Option<Reply>,
}

/// The handle proxy threads use. Dropping it lets the thread finish what is queued, and
/// waits for that, so the store is closed when the handle is gone.
pub struct SessionWriter {
    queue: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SessionWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SessionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionWriter")
    }
}

impl SessionWriter {
    /// Starts the writer thread for `store`. It ends when every handle is dropped.
    pub fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let (queue, jobs) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("gatehouse-session-writer".into())
            .spawn(move || run(&store, &jobs))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues a write and returns at once.
    pub fn submit(&self, write: SessionWrite) -> Result<(), StoreError> {
        self.send(Job { write, reply: None })
    }

    /// Queues a write and waits (asynchronously) until it is durable.
    pub async fn commit(&self, write: SessionWrite) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Job {
            write,
            reply: Some(reply),
        })?;
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Db("the session writer stopped".into())))
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let Some(queue) = &self.queue else {
            return Err(StoreError::Db("the session writer stopped".into()));
        };
        queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::Db("the session write queue is full".into()),
            TrySendError::Disconnected(_) => StoreError::Db("the session writer stopped".into()),
        })
    }
}

fn apply(tx: &mut super::Tx, write: &SessionWrite) -> Result<(), StoreError> {
    match write {
        SessionWrite::Put(record) => tx.put_session(record),
        SessionWrite::Delete(sids) => tx.delete_sessions(sids).map(|_| ()),
    }
}

fn run(store: &Store, jobs: &Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let together = store.write(|tx| batch.iter().try_for_each(|job| apply(tx, &job.write)));
        match together {
            Ok(()) => {
                for job in batch {
                    if let Some(reply) = job.reply {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            Err(e) if batch.len() == 1 => finish_alone(batch.remove(0), Err(e)),
            Err(_) => {
                for job in batch {
                    let outcome = store.write(|tx| apply(tx, &job.write));
                    finish_alone(job, outcome);
                }
            }
        }
    }
}

fn finish_alone(job: Job, outcome: Result<(), StoreError>) {
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "a session write failed; memory already has the change");
    }
    if let Some(reply) = job.reply {
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::sessions::SESSION_RECORD_VERSION;

    fn record(sid: &str) -> SessionRecord {
        SessionRecord {
            version: SESSION_RECORD_VERSION,
            sid: sid.into(),
            identity: Identity::new("corp", "alice"),
            idp_sid: None,
            created_at: 1,
            expires_at: u64::MAX / 2,
            tokens: Default::default(),
            mfa_at: None,
        }
    }

    #[tokio::test]
    async fn a_committed_write_is_in_the_store_when_the_answer_comes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let writer = SessionWriter::start(store.clone()).unwrap();
        writer
            .commit(SessionWrite::Put(Box::new(record("s1"))))
            .await
            .unwrap();
        assert_eq!(store.sessions().unwrap().len(), 1);
        writer
            .commit(SessionWrite::Delete(vec!["s1".into()]))
            .await
            .unwrap();
        assert!(store.sessions().unwrap().is_empty());
    }

    #[tokio::test]
    async fn writes_queued_together_all_land_and_all_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let writer = SessionWriter::start(store.clone()).unwrap();
        for i in 0..200 {
            writer
                .submit(SessionWrite::Put(Box::new(record(&format!("s{i}")))))
                .unwrap();
        }
        let waits: Vec<_> = (200..260)
            .map(|i| writer.commit(SessionWrite::Put(Box::new(record(&format!("s{i}"))))))
            .collect();
        for w in waits {
            w.await.unwrap();
        }
        assert_eq!(store.sessions().unwrap().len(), 260);
    }
}
