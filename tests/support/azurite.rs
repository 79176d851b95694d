//! Azurite, Microsoft's Azure Blob Storage emulator (from npm, installed by `make setup` under
//! `.cache/azurite`), on a free port of 127.0.0.1 with its data in a temporary folder; containers are
//! created and blobs read through Microsoft's Python client (`scripts/azure_blobs.py`).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running Azurite blob service, stopped on drop.
pub struct Azurite {
    pub port: u16,
    child: Child,
    _data: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let server = super::root().join(".cache/azurite/node_modules/.bin/azurite-blob");
        assert!(server.is_file(), "{} is missing: run `make setup`", server.display());
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = tempfile::tempdir().unwrap();
        let child = Command::new(server)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
            .arg("--location")
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let azurite = Azurite { port, child, _data: data };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "azurite-blob did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        azurite
    }

    /// The environment that points padim's `az://` locations at this emulator (object_store's
    /// emulator mode: the well-known development account, plain HTTP).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AZURE_STORAGE_USE_EMULATOR", "true".into()), ("AZURITE_BLOB_STORAGE_URL", self.endpoint())]
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn client(&self, args: &[&str]) -> Output {
        let output = Command::new(super::root().join(".venv/bin/python"))
            .arg(super::root().join("scripts/azure_blobs.py"))
            .arg(self.endpoint())
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "azure_blobs.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    pub fn create_container(&self, container: &str) {
        self.client(&["create", container]);
    }

    /// Every blob name in the container.
    pub fn list(&self, container: &str) -> Vec<String> {
        String::from_utf8(self.client(&["list", container]).stdout).unwrap().lines().map(String::from).collect()
    }

    pub fn get(&self, container: &str, blob: &str) -> Vec<u8> {
        self.client(&["get", container, blob]).stdout
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
