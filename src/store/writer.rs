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

use super::sessions::{Identity, SessionOwner, SessionRecord};
use super::{Store, StoreError};

/// At most this many writes wait for the writer; past it a write is refused at once (the
/// caller has already changed memory, so only durability is lost, and it is logged).
const QUEUE: usize = 65_536;
/// At most this many writes go into one transaction.
const BATCH: usize = 512;

/// A new identity for each stored session of an owner (an admin changed the account).
pub type Reprofile = Arc<dyn Fn(&Identity) -> Identity + Send + Sync>;

/// A change to one stored session record (it may run twice: a failed batch is retried one
/// write at a time).
pub type Amend = Arc<dyn Fn(&mut SessionRecord) + Send + Sync>;

/// One session write.
#[derive(Clone)]
pub enum SessionWrite {
    /// Writes (or replaces) a session record.
    Put(Box<SessionRecord>),
    /// Changes a stored session in place (its last use, second factor, identity, tokens),
    /// keeping the rest, the IdP tokens above all (memory does not hold them); nothing
    /// when the store no longer has the session.
    Amend(String, Amend),
    /// Deletes sessions by id.
    Delete(Vec<String>),
    /// Deletes every stored session of an owner (a shared store: sessions other replicas
    /// hold are found in the store, not in this replica's memory).
    DeleteOf(SessionOwner),
    /// Rewrites the identity of every stored session of an owner (a shared store).
    ReprofileOf(SessionOwner, Reprofile),
}

impl std::fmt::Debug for SessionWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionWrite::Put(record) => f.debug_tuple("Put").field(&record.sid).finish(),
            SessionWrite::Amend(sid, _) => f.debug_tuple("Amend").field(sid).finish(),
            SessionWrite::Delete(sids) => f.debug_tuple("Delete").field(sids).finish(),
            SessionWrite::DeleteOf(owner) => f.debug_tuple("DeleteOf").field(owner).finish(),
            SessionWrite::ReprofileOf(owner, _) => {
                f.debug_tuple("ReprofileOf").field(owner).finish()
            }
        }
    }
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
        SessionWrite::Amend(sid, amend) => tx.amend_session(sid, &**amend).map(|_| ()),
        SessionWrite::Delete(sids) => tx.delete_sessions(sids).map(|_| ()),
        SessionWrite::DeleteOf(owner) => tx.delete_sessions_of(owner).map(|_| ()),
        SessionWrite::ReprofileOf(owner, reprofile) => {
            tx.reprofile_sessions_of(owner, &**reprofile)
        }
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

/// Group commit for transactions a caller waits for (logins: JIT provisioning and the new
/// session). One thread runs them: a transaction that arrives while a commit is in flight waits
/// for it, and everything that queued meanwhile is run in the next transaction together (one
/// fsync for the batch); a lone transaction keeps its own. Each caller is answered only once
/// the commit that holds its writes is durable. When a batch fails, nothing of it is kept and
/// each of its transactions runs again alone, so one failing transaction fails only itself.
///
/// On PostgreSQL there is no thread: each transaction runs at once on its caller's thread, on
/// its own pooled connection ([`Store::write`]), so logins commit side by side and the server
/// groups their WAL flushes (faster than one connection running them one after the other).
pub struct GroupCommit {
    /// The store, when its transactions run on the caller's thread (PostgreSQL).
    direct: Option<Arc<Store>>,
    queue: Option<SyncSender<Box<dyn Batched>>>,
    /// Transactions handed over and not yet taken by the thread (for tests).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One queued transaction, with the way to answer its caller.
trait Batched: Send {
    /// Does the transaction's work in `tx` (which may hold other transactions' work too).
    fn run(&mut self, tx: &mut super::Tx) -> Result<(), StoreError>;
    /// Answers the caller: the work's output once committed, or the error.
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
}

struct Task<T, F> {
    work: F,
    out: Option<T>,
    reply: SyncSender<Result<T, StoreError>>,
}

impl<T, F> Batched for Task<T, F>
where
    T: Send,
    F: FnMut(&mut super::Tx) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, tx: &mut super::Tx) -> Result<(), StoreError> {
        self.out = None;
        self.out = Some((self.work)(tx)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        let Task { out, reply, .. } = *self;
        let answer = outcome.and_then(|()| {
            out.ok_or_else(|| StoreError::Db("a grouped transaction left no result".into()))
        });
        let _ = reply.send(answer);
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

impl GroupCommit {
    /// Starts the commit thread for `store` (named `name`). It ends when the handle is dropped,
    /// after what is queued.
    pub fn start(store: Arc<Store>, name: &str) -> std::io::Result<Self> {
        if store.is_shared() {
            return Ok(Self {
                direct: Some(store),
                queue: None,
                waiting: Arc::default(),
                thread: None,
            });
        }
        let (queue, jobs) = sync_channel::<Box<dyn Batched>>(BATCH * 4);
        let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let taken = waiting.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run_grouped(&store, &jobs, &taken))?;
        Ok(Self {
            direct: None,
            queue: Some(queue),
            waiting,
            thread: Some(thread),
        })
    }

    /// Runs `work` in a write transaction (perhaps together with others) and returns its output
    /// once that transaction is durable; an `Err` from `work` rolls back its own writes only.
    /// `work` may run more than once (again alone, when its batch failed, or after it lost a
    /// race), each time on a transaction where its earlier run left nothing. Blocks the
    /// calling thread: call it from tokio's blocking pool, never from a proxy thread.
    pub fn write<T, F>(&self, mut work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut super::Tx) -> Result<T, StoreError> + Send + 'static,
    {
        if let Some(store) = &self.direct {
            return store.write(&mut work);
        }
        let stopped = || StoreError::Db("the commit thread stopped".into());
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        let (reply, answer) = sync_channel(1);
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let task = Box::new(Task {
            work,
            out: None,
            reply,
        });
        if queue.send(task).is_err() {
            self.waiting
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(stopped());
        }
        answer.recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// How many transactions are queued and not yet taken into a batch (tests wait on it).
    #[doc(hidden)]
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn run_grouped(
    store: &Store,
    jobs: &Receiver<Box<dyn Batched>>,
    waiting: &std::sync::atomic::AtomicUsize,
) {
    let took = |n: usize| waiting.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        took(batch.len());
        let together = store.write(|tx| batch.iter_mut().try_for_each(|job| job.run(tx)));
        match together {
            Ok(()) => batch.into_iter().for_each(|job| job.finish(Ok(()))),
            Err(e) if batch.len() == 1 => batch.remove(0).finish(Err(e)),
            Err(_) => {
                for mut job in batch {
                    let outcome = store.write(|tx| job.run(tx));
                    job.finish(outcome);
                }
            }
        }
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
            last_seen: None,
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

    /// Waits (without a timed sleep) until `n` transactions are queued behind the one running.
    fn until_waiting(group: &GroupCommit, n: usize) {
        while group.waiting() != n {
            std::thread::yield_now();
        }
    }

    /// Transactions that queue while a commit is in flight go into the next transaction
    /// together; when one of them fails, the batch is rolled back and each runs again alone:
    /// the failing one gets its error, the others are committed and answered Ok.
    #[test]
    fn a_failing_transaction_in_a_batch_fails_alone_and_the_others_commit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let group = Arc::new(GroupCommit::start(store.clone(), "test-group").unwrap());
        // The first transaction holds the thread until the others are queued behind it.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        let (started, running) = std::sync::mpsc::channel::<()>();
        let first = {
            let group = group.clone();
            std::thread::spawn(move || {
                group.write(move |tx| {
                    let _ = started.send(());
                    gate.lock().unwrap().recv().unwrap();
                    tx.put_session(&record("first"))
                })
            })
        };
        running.recv().unwrap();
        let runs: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
        let mut queued = Vec::new();
        for (i, name) in ["good-1", "bad", "good-2"].into_iter().enumerate() {
            let (shared, runs) = (group.clone(), runs[i].clone());
            queued.push(std::thread::spawn(move || {
                shared.write(move |tx| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tx.put_session(&record(name))?;
                    if name == "bad" {
                        return Err(StoreError::Db("this login fails".into()));
                    }
                    Ok(name)
                })
            }));
            until_waiting(&group, i + 1);
        }
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        let outcomes: Vec<_> = queued.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(outcomes[0].as_ref().unwrap(), &"good-1");
        assert!(
            outcomes[1].is_err(),
            "the failing transaction reports its error"
        );
        assert_eq!(outcomes[2].as_ref().unwrap(), &"good-2");
        // good-1 ran in the batch and again alone: the three were batched.
        assert_eq!(runs[0].load(Ordering::SeqCst), 2);
        let mut stored: Vec<String> = store
            .sessions()
            .unwrap()
            .into_iter()
            .map(|r| r.sid)
            .collect();
        stored.sort();
        assert_eq!(
            stored,
            ["first", "good-1", "good-2"],
            "nothing of the bad one is kept"
        );
    }

    /// Many callers at once: every one is answered with its own output, and every write is
    /// in the store when its answer comes.
    #[test]
    fn concurrent_transactions_are_each_answered_after_their_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let group = Arc::new(GroupCommit::start(store.clone(), "test-group").unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (group, store) = (group.clone(), store.clone());
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let sid = format!("s{t}-{i}");
                        let answered = group
                            .write({
                                let sid = sid.clone();
                                move |tx| tx.put_session(&record(&sid)).map(|()| sid.clone())
                            })
                            .unwrap();
                        assert_eq!(answered, sid);
                        let stored = store.sessions().unwrap();
                        assert!(stored.iter().any(|r| r.sid == sid), "{sid} not stored");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.sessions().unwrap().len(), 160);
    }
}
