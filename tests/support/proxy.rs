//! A TCP proxy on 127.0.0.1 that injects faults between a client and a
//! server: kill every connection (a crashed server or a cut network),
//! refuse new ones, or delay what the server sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
struct State {
    target: Mutex<Option<SocketAddr>>,
    refusing: AtomicBool,
    delay_ms: AtomicU64,
    accepted: AtomicU64,
    accept_times: Mutex<Vec<Instant>>,
    conns: Mutex<Vec<JoinHandle<()>>>,
}

/// See the module docs. Dropping it stops it and cuts every connection.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        *lock(&state.target) = Some(target);
        let st = state.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                lock(&st.accept_times).push(Instant::now());
                if st.refusing.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Some(target) = *lock(&st.target) else {
                    continue;
                };
                let st2 = st.clone();
                let handle = tokio::spawn(async move {
                    let _ = pipe(inbound, target, st2).await;
                });
                lock(&st.conns).push(handle);
            }
        });
        Ok(Self {
            addr,
            state,
            acceptor,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Points new connections at another server.
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.state.target) = Some(target);
    }

    /// Cuts every open connection at once.
    pub fn kill_connections(&self) {
        for h in lock(&self.state.conns).drain(..) {
            h.abort();
        }
    }

    /// While refusing, new connections are accepted and closed at once.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Delays every chunk the server sends by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// TCP connections accepted so far (connection attempts).
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// When each connection was accepted.
    pub fn accept_times(&self) -> Vec<Instant> {
        lock(&self.state.accept_times).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.kill_connections();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn pipe(inbound: TcpStream, target: SocketAddr, st: Arc<State>) -> std::io::Result<()> {
    let outbound = TcpStream::connect(target).await?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (mut ci, mut co) = inbound.into_split();
    let (mut si, mut so) = outbound.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut ci, &mut so).await;
        let _ = so.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match si.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = st.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if co.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = co.shutdown().await;
    };
    tokio::join!(up, down);
    Ok(())
}
