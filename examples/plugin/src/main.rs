//! A Junction broker with one exchange type and one auth backend of its own.
mod round_robin;
mod shared_secret;

fn main() -> std::process::ExitCode {
    junction::Junction::new()
        .exchange_type(round_robin::RoundRobin)
        .auth_backend("shared-secret", shared_secret::build)
        .run()
}
