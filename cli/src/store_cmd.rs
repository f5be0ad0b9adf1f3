//! `vane store backup` (online, through the admin API) and `vane store restore` (offline,
//! on the control plane's data dir): the documented way back from a store the control
//! plane refuses to open as damaged.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use vane_proto::admin::BackupRequest;
use vane_proto::store::backup_entry;

use crate::client::{Admin, status_error};

/// Back up or restore the control plane's store.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum StoreCommand {
    /// Write every retained version to FILE (needs a `write` token: configs hold keys).
    Backup {
        /// The backup file to write (replaced atomically when complete).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Rebuild a store from a backup, offline (the control plane stopped).
    Restore {
        /// The control plane's data dir.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Keep an existing data dir aside (renamed DIR.replaced-UNIXMS) instead of refusing.
        #[arg(long)]
        replace: bool,
    },
}

pub(crate) async fn run(admin: &Admin, command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Backup { output } => backup(admin, &output).await,
        StoreCommand::Restore { data_dir, from, replace } => {
            let done = tokio::task::spawn_blocking(move || vane_control_plane::restore(&data_dir, &from, replace))
                .await
                .map_err(|e| anyhow!("restore stopped: {e}"))??;
            let mut line = format!("restored {} versions (newest {})", done.versions, done.latest);
            if let Some(v) = done.republished {
                line.push_str(&format!("; version {} published again as version {v}", done.latest));
            }
            if let Some(aside) = done.kept_aside {
                line.push_str(&format!("; the previous data dir is kept at {}", aside.display()));
            }
            outln!("{line}")?;
            Ok(())
        }
    }
}

async fn backup(admin: &Admin, output: &Path) -> anyhow::Result<()> {
    let mut client = admin.client().await?;
    let mut stream = client.backup(admin.request(BackupRequest {})?).await.map_err(status_error)?.into_inner();
    let tmp = PathBuf::from(format!("{}.partial", output.display()));
    let file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    vane_control_plane::write_backup_header(&mut out)?;
    let (mut versions, mut newest) = (0u64, 0u64);
    let mut ended = false;
    while let Some(entry) = stream.message().await.map_err(status_error)? {
        match &entry.entry {
            Some(backup_entry::Entry::Version(v)) => {
                versions += 1;
                newest = v.version;
            }
            Some(backup_entry::Entry::End(_)) => ended = true,
            None => {}
        }
        vane_control_plane::write_backup_entry(&mut out, &entry)?;
    }
    if !ended {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!("the control plane ended the backup early; nothing written"));
    }
    let file = out.into_inner().map_err(|e| anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, output).with_context(|| format!("cannot write {}", output.display()))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "backed up {versions} versions (newest {newest}) to {}", output.display())?;
    Ok(())
}
