//! The operator's Kubernetes API client: kube's, without its built-in retries.
//!
//! kube 5's default client retries every request answered 429, 503 or 504 up to 15 times,
//! honouring `Retry-After`, with delays growing to 1000 s. Inside the operator that hides
//! throttling: a reconcile waits in the client until its 60 s deadline counts it a timeout
//! (three in a row fail `/healthz`, and the kubelet restarts a healthy operator), and a webhook
//! call outlives the apiserver's patience. Without them a throttled request fails at once, the
//! reconcile is retried by the controller's own backoff (5 s doubling to 5 min) and the error
//! is counted by kind (`dind_operator_reconcile_errors_total`).

use kube::{Client, Config};

/// A client for `config` that does not retry on its own.
pub fn client(mut config: Config) -> kube::Result<Client> {
    config.default_retry = false;
    Client::try_from(config)
}

/// The client of the environment (in cluster, or `KUBECONFIG`), without retries.
pub async fn infer() -> Result<Client, String> {
    let config = Config::infer().await.map_err(|e| e.to_string())?;
    client(config).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// An apiserver that throttles everything: each request answered 429, Retry-After 1 s.
    async fn throttling_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    // One answer per request read (keep-alive may carry several).
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"throttled","reason":"TooManyRequests","code":429}"#;
                        let answer = format!(
                            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    fn config(url: &str) -> Config {
        Config::new(url.parse().unwrap())
    }

    #[tokio::test]
    async fn a_throttled_request_fails_at_once_instead_of_waiting_in_the_client() {
        let (url, seen) = throttling_server().await;
        let api: Api<ConfigMap> = Api::namespaced(client(config(&url)).unwrap(), "ns");
        let started = std::time::Instant::now();
        let err = api.get("x").await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 429), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "one request, no retries");
        assert!(started.elapsed() < std::time::Duration::from_millis(900), "waited {:?}", started.elapsed());

        // What it was before: kube's default client asks again after Retry-After.
        let (url, seen) = throttling_server().await;
        let default: Api<ConfigMap> = Api::namespaced(Client::try_from(config(&url)).unwrap(), "ns");
        let _ = tokio::time::timeout(std::time::Duration::from_millis(2500), default.get("x")).await;
        assert!(seen.load(Ordering::SeqCst) >= 2, "kube's default client no longer retries: this module may go");
    }
}
