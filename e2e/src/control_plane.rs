//! A real Kubernetes control plane on loopback: `etcd` and `kube-apiserver` as local
//! processes, the way kubebuilder's envtest runs them (no kubelet, scheduler or
//! controller-manager: objects are stored, validated, authorized and watched for real, but no
//! pod ever runs and no built-in controller writes status or collects garbage).
//!
//! The binaries come from `e2e/setup.sh` (built from the `k8s.io/kubernetes` and
//! `go.etcd.io/etcd/server/v3` Go modules) in `$KALAM_E2E_BIN_DIR`, default
//! `~/.cache/kalamdb-e2e/bin`. One control plane serves every test of the process; tests keep
//! apart by using their own Kubernetes namespaces.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use crate::process::{die_with_parent, free_port, log_tail};

/// How long etcd and kube-apiserver may take to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// The group that RBAC lets do anything.
const MASTERS: &str = "system:masters";

/// The running control plane.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    dir: PathBuf,
    admin_token: String,
}

static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_dir_at_exit() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Where `e2e/setup.sh` put etcd and kube-apiserver.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KALAM_E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/kalamdb-e2e/bin")
}

impl ControlPlane {
    /// The control plane of this test process, started on first use. Its processes are
    /// owned by a thread that lives as long as the process, so they die with it.
    pub fn shared() -> &'static ControlPlane {
        let plane = PLANE.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("e2e-control-plane".into())
                .spawn(move || match start() {
                    Ok((plane, children)) => {
                        let _ = tx.send(Ok(plane));
                        let _children = children;
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                });
            match spawned {
                Ok(_) => rx
                    .recv()
                    .unwrap_or_else(|_| Err("the control-plane thread died".into())),
                Err(e) => Err(format!("spawning the control-plane thread: {e}")),
            }
        });
        match plane {
            Ok(p) => p,
            Err(e) => panic!("the Kubernetes control plane did not start: {e}"),
        }
    }

    /// The CA certificate that signed the API server's serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// kube-apiserver's log.
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    /// Writes a kubeconfig that authenticates with `token` and returns its path.
    pub fn kubeconfig(&self, user: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{user}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\n\
             contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n\
             current-context: e2e\n",
            self.server,
            self.ca_file().display()
        );
        // Tests read kubeconfigs while others are written: replace the file atomically.
        let tmp = self
            .dir
            .join(format!("kubeconfig-{user}.{:016x}", rand::random::<u64>()));
        std::fs::write(&tmp, text).expect("writing a kubeconfig");
        std::fs::rename(&tmp, &path).expect("installing a kubeconfig");
        path
    }

    /// The kubeconfig of the cluster administrator (group `system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("e2e-admin", &self.admin_token)
    }

    /// A client as the cluster administrator.
    pub async fn admin_client(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig()).await
    }
}

/// A client configured by the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("reading a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client config from the kubeconfig");
    kube::Client::try_from(config).expect("a Kubernetes client")
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A CA, a serving certificate for 127.0.0.1 signed by it, and the service-account key pair.
fn certificates(dir: &Path) -> Result<(), String> {
    let p = |name: &str| dir.join(name);
    run(
        "openssl: the CA",
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kalam-e2e-ca", "-keyout"])
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.crt")),
    )?;
    run(
        "openssl: the serving key",
        Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=kube-apiserver", "-keyout"])
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
    )?;
    std::fs::write(
        p("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .map_err(|e| format!("writing server.ext: {e}"))?;
    run(
        "openssl: the serving certificate",
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.crt"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("server.ext"))
            .arg("-out")
            .arg(p("server.crt")),
    )?;
    run(
        "openssl: the service-account key",
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(p("sa.key"))
            .arg("2048"),
    )?;
    run(
        "openssl: the service-account public key",
        Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(p("sa.key"))
            .arg("-out")
            .arg(p("sa.pub")),
    )
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(err_file));
    die_with_parent(&mut cmd);
    cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))
}

fn exited(child: &mut Child, name: &str, log: &Path) -> Result<(), String> {
    match child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "{name} exited ({status}); its log ends:\n{}",
            log_tail(log, 40)
        )),
        _ => Ok(()),
    }
}

fn start() -> Result<(ControlPlane, Vec<Child>), String> {
    let bins = bin_dir();
    let (etcd_bin, apiserver_bin) = (bins.join("etcd"), bins.join("kube-apiserver"));
    for bin in [&etcd_bin, &apiserver_bin] {
        if !bin.exists() {
            return Err(format!(
                "{} is missing: run `bash e2e/setup.sh` (it builds etcd and kube-apiserver from \
                 their Go modules; .ci/run does it when they are absent)",
                bin.display()
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("kalam-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("etcd")).map_err(|e| format!("{}: {e}", dir.display()))?;
    if DIR.set(dir.clone()).is_ok() {
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(remove_dir_at_exit);
        }
    }
    certificates(&dir)?;
    let admin_token = format!("e2e-admin-{:016x}", rand::random::<u64>());
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{admin_token},e2e-admin,e2e-admin,\"{MASTERS}\"\n"),
    )
    .map_err(|e| format!("writing tokens.csv: {e}"))?;

    let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let etcd_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let d = |name: &str| dir.join(name).display().to_string();
    let etcd_log = dir.join("etcd.log");
    let mut etcd = spawn(
        &etcd_bin,
        &[
            "--name=e2e".into(),
            format!("--data-dir={}", d("etcd")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=e2e={peer_url}"),
            // Test data: durability across power loss is not the point here.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ],
        &etcd_log,
    )?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", client_port)).is_err() {
        exited(&mut etcd, "etcd", &etcd_log)?;
        if Instant::now() > deadline {
            return Err(format!("etcd did not listen on {etcd_url}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let api_log = dir.join("kube-apiserver.log");
    let mut apiserver = spawn(
        &apiserver_bin,
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The endpoint reconciler refuses a loopback address, and nothing routes to
            // the `kubernetes` Service here anyway.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", d("certs")),
            format!("--tls-cert-file={}", d("server.crt")),
            format!("--tls-private-key-file={}", d("server.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
        ],
        &api_log,
    )?;
    let plane = ControlPlane {
        server: format!("https://127.0.0.1:{api_port}"),
        dir,
        admin_token,
    };

    // Ready when /readyz answers "ok" over TLS verified against our CA.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime for the readiness probe: {e}"))?;
    let kubeconfig = plane.admin_kubeconfig();
    let mut last;
    loop {
        exited(&mut etcd, "etcd", &etcd_log)?;
        exited(&mut apiserver, "kube-apiserver", &api_log)?;
        let probe = runtime.block_on(async {
            let client = client_from(&kubeconfig).await;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            client
                .request_text(request)
                .await
                .map_err(|e| e.to_string())
        });
        match probe {
            Ok(body) if body.trim() == "ok" => break,
            Ok(body) => last = body,
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(format!(
                "kube-apiserver was not ready after {STARTUP_TIMEOUT:?} (last answer: {last}); \
                 its log ends:\n{}",
                log_tail(&api_log, 40)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok((plane, vec![apiserver, etcd]))
}
