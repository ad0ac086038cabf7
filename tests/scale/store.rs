use std::sync::Arc;

use control_store::{ControlStore, RedisStore, conformance};
use gatehouse_tests::services::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_conformance_suite() {
    let redis = Redis::start().expect("redis");
    let url = redis.url.clone();
    conformance::run_suite(|| {
        let url = url.clone();
        async move {
            redis_flush(&url).await;
            Arc::new(RedisStore::connect(&url).await.expect("connect")) as Arc<dyn ControlStore>
        }
    })
    .await;
}

/// Empties the database (each story starts from nothing).
async fn redis_flush(url: &str) {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url, "FLUSHDB"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "FLUSHDB failed");
}
