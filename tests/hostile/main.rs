//! The hostile boot network (issue 14): each attack an unauthenticated host
//! on the boot network could try, run against the real server, asserting
//! both that it fails and that the same flow done legitimately from the
//! machine's bound address still works. One module per area.

mod binding;
mod bounds;
#[path = "../common/mod.rs"]
mod common;
mod dhcp;
mod dhcp6;
mod durability;
mod fetch;
mod pair;
mod rollout;
mod shared;
mod standby;
mod uki;

mod process {
    //! The server as its own process, for the tests that kill it or read
    //! its memory: started on a config file, killed (SIGKILL) and reaped
    //! when dropped, panic or not.

    use std::time::Duration;

    pub struct Server(pub std::process::Child);

    impl Server {
        pub fn start(config: &std::path::Path) -> Server {
            Server(
                std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"))
                    .args(["serve", "--config"])
                    .arg(config)
                    .env_remove("IRONBOOT_E2E")
                    .stdout(std::process::Stdio::null())
                    .stderr(match std::env::var_os("IRONBOOT_TEST_SERVER_LOG") {
                        // A file per server, for a failing test's story.
                        Some(dir) => {
                            std::fs::File::create(std::path::Path::new(&dir).join(format!(
                                "server-{}.log",
                                config.display().to_string().replace('/', "_")
                            )))
                            .unwrap()
                            .into()
                        }
                        None => std::process::Stdio::null(),
                    })
                    .spawn()
                    .unwrap(),
            )
        }

        /// Waits (up to 10 s) for `/healthz` at `base`.
        pub async fn healthy(self, base: &str) -> Server {
            for _ in 0..100 {
                if reqwest::get(format!("{base}/healthz")).await.is_ok() {
                    return self;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the server at {base} did not come up");
        }

        pub fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The test network's config with the binding rule on and HTTP on a
    /// fixed free port (so a restarted server answers at the same URL),
    /// written into `dir`: its path and the HTTP base URL.
    pub async fn bound_config(dir: &std::path::Path) -> (std::path::PathBuf, String) {
        let port = free_port();
        let text = crate::common::full_config_with(dir, "", crate::common::BINDING_REQUIRED)
            .replace(
                "listen = \"127.0.0.1:0\"\n[tftp]",
                &format!("listen = \"127.0.0.1:{port}\"\n[tftp]"),
            );
        let text = crate::common::on_test_store(&text, dir).await;
        let config = dir.join("ironboot.toml");
        std::fs::write(&config, text).unwrap();
        (config, format!("http://127.0.0.1:{port}"))
    }

    /// A port the kernel just handed out (so restarts can reuse it).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}
