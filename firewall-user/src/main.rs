//! `firewall`: a stateful XDP firewall's controller and CLI.

mod cli;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<cli::Refused>().is_some() {
                std::process::ExitCode::from(cli::REFUSED_EXIT)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
