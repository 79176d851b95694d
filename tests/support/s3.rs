//! A real S3-compatible server for tests (moto's server mode on 127.0.0.1, from the project's Python
//! environment), a plain HTTP client for arranging and inspecting its bucket, and a TCP proxy that
//! makes the endpoint go away and come back.
//!
//! moto keeps its objects in memory, so stopping moto itself would wipe the bucket: that is a new
//! server, not an outage. A real S3 outage leaves the objects in place, so the outage tests stop the
//! endpoint padim talks to (the proxy: open connections are cut, new ones refused) while the server
//! and its objects live on.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A signature moto accepts (it checks none); without one, moto treats requests as anonymous and
/// refuses to read private objects.
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=padim-test/20260101/us-east-1/s3/aws4_request, \
                             SignedHeaders=host, Signature=0000";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// moto's S3 server on a free port of 127.0.0.1, stopped on drop.
pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let server = super::root().join(".venv/bin/moto_server");
        assert!(server.is_file(), "{} is missing: run `make setup`", server.display());
        let port = free_port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(port, "GET", "/", &[]).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// The endpoint URL for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (a plain PUT, as S3 has it).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, _) = http(self.port, "PUT", &format!("/{bucket}"), &[]).unwrap();
        assert_eq!(status, 200, "creating bucket {bucket}");
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let (status, _) = http(self.port, "PUT", &format!("/{bucket}/{key}"), body).unwrap();
        assert_eq!(status, 200, "PUT {bucket}/{key}");
    }

    pub fn put_file(&self, bucket: &str, key: &str, file: &Path) {
        self.put(bucket, key, &std::fs::read(file).unwrap());
    }

    /// The object's bytes, or `None` if there is none.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = http(self.port, "GET", &format!("/{bucket}/{key}"), &[]).unwrap();
        match status {
            200 => Some(body),
            404 => None,
            other => panic!("GET {bucket}/{key}: HTTP {other}"),
        }
    }

    /// Keys under `prefix` (up to 1,000, which the tests never exceed).
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = http(self.port, "GET", &format!("/{bucket}?list-type=2&prefix={prefix}"), &[]).unwrap();
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        text.split("<Key>").skip(1).map(|part| part.split("</Key>").next().unwrap().to_string()).collect()
    }

    /// The environment under which padim reaches this server (or `endpoint`, a proxy in front of it).
    pub fn env(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            ("AWS_ACCESS_KEY_ID", "padim-test-key-id".into()),
            ("AWS_SECRET_ACCESS_KEY", "padim-test-secret-never-printed".into()),
            ("AWS_REGION", "us-east-1".into()),
            // Fail fast while the endpoint is away instead of retrying for two minutes.
            ("PADIM_STORE_RETRY_SECONDS", "2".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (no `Expect: 100-continue`, which moto's server does not answer).
pub fn http(port: u16, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {AUTHORIZATION}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or(std::io::ErrorKind::InvalidData)?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
    let mut body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
    out
}

struct ProxyState {
    down: AtomicBool,
    /// When a request from padim contains this text, the endpoint goes down before forwarding it.
    trigger: Mutex<Option<String>>,
    tripped: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy in front of the server: the endpoint padim is given. It goes down (cuts every
/// connection, refuses new ones) on [`Proxy::stop`] or when a request matches its trigger, and comes
/// back on [`Proxy::start`], on the same port.
pub struct Proxy {
    pub port: u16,
    upstream: u16,
    state: Arc<ProxyState>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn new(upstream: u16) -> Proxy {
        let state = Arc::new(ProxyState {
            down: AtomicBool::new(true),
            trigger: Mutex::new(None),
            tripped: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        Proxy { port: free_port(), upstream, state, acceptor: None }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Brings the endpoint up; it goes down again at the first request containing `trigger`.
    pub fn start(&mut self, trigger: Option<&str>) {
        self.stop();
        *self.state.trigger.lock().unwrap() = trigger.map(str::to_string);
        self.state.tripped.store(false, Ordering::SeqCst);
        self.state.down.store(false, Ordering::SeqCst);
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (state, upstream) = (self.state.clone(), self.upstream);
        self.acceptor = Some(std::thread::spawn(move || {
            while !state.down.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                        {
                            let mut open = state.connections.lock().unwrap();
                            open.push(client.try_clone().unwrap());
                            open.push(server.try_clone().unwrap());
                        }
                        let (s1, s2) = (state.clone(), state.clone());
                        let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || pump(client, server, &s1, true));
                        std::thread::spawn(move || pump(server2, client2, &s2, false));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
            // The listener is dropped here: new connections are refused.
        }));
    }

    /// Takes the endpoint down now.
    pub fn stop(&mut self) {
        go_down(&self.state);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
    }

    /// Whether the trigger fired.
    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn go_down(state: &ProxyState) {
    state.down.store(true, Ordering::SeqCst);
    for stream in state.connections.lock().unwrap().drain(..) {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, state: &ProxyState, from_client: bool) {
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if from_client && let Some(trigger) = state.trigger.lock().unwrap().as_deref() {
            let text = String::from_utf8_lossy(&buffer[..n]);
            if text.contains(trigger) {
                state.tripped.store(true, Ordering::SeqCst);
                go_down(state);
                break;
            }
        }
        if state.down.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
