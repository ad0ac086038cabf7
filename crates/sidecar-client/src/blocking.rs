//! A blocking facade for synchronous runtimes: the same client, driven by a
//! small runtime of its own.

use std::sync::Arc;

use policy_core::Event;

use crate::{Client, ClientConfig, ClientDecision, ClientError, ClientStats, Session, SessionInfo};

/// A [`Client`] usable from synchronous code. Do not call its methods from
/// inside an async runtime (they block the calling thread).
#[derive(Debug, Clone)]
pub struct BlockingClient {
    runtime: Arc<tokio::runtime::Runtime>,
    client: Client,
}

/// A [`Session`] usable from synchronous code; `decide` may be called from
/// several threads at once.
#[derive(Debug)]
pub struct BlockingSession {
    runtime: Arc<tokio::runtime::Runtime>,
    session: Option<Session>,
}

impl BlockingClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gatehouse-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(e.to_string()))?;
        let client = {
            let _guard = runtime.enter();
            Client::new(config)?
        };
        Ok(Self {
            runtime: Arc::new(runtime),
            client,
        })
    }

    pub fn open_session(&self, info: SessionInfo) -> BlockingSession {
        let _guard = self.runtime.enter();
        BlockingSession {
            runtime: self.runtime.clone(),
            session: Some(self.client.open_session(info)),
        }
    }

    pub fn stats(&self) -> ClientStats {
        self.client.stats()
    }
}

impl BlockingSession {
    /// Decides one event, blocking the calling thread for at most the
    /// event's deadline plus the local evaluation.
    pub fn decide(&self, event: Event) -> ClientDecision {
        match &self.session {
            Some(s) => self.runtime.block_on(s.decide(event)),
            None => unreachable!("the session is only taken on drop"),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.session.as_ref().is_some_and(Session::is_connected)
    }
}

impl Drop for BlockingSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.runtime.block_on(s.close());
        }
    }
}
