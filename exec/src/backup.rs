//! Backups (`BACKUP TO 'dir'`, `quarry backup create`) and restores
//! (`RESTORE FROM 'dir'`, `quarry restore`): docs/INSTALL.md, "Backup and
//! restore".
//!
//! A backup directory, on the file system of the node that runs the
//! statement (a mounted backup disk):
//!
//! ```text
//! chunks/<sha256>                      a data file's bytes, named by their SHA-256
//! backups/<backup_id>/catalog.qsnp     the catalog (Raft snapshot file format)
//! backups/<backup_id>/manifest.json    what the backup holds (`Manifest`)
//! ```
//!
//! A backup is the catalog as of one Raft log position (every table, its
//! snapshots within the time-travel window, dropped tables, views, roles,
//! ingest buffers) and every data file that catalog lists. Data files are
//! immutable and named by content, so a later backup into the same
//! directory copies only the files no earlier backup there holds
//! (incremental); parity is not kept — a restore writes the files as new
//! stripes for the cluster it restores into.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use quarry_common::SqlState;
use quarry_common::catalog::{Catalog, ChunkId};
use serde::{Deserialize, Serialize};

use crate::chunks::DataFileStore;
use crate::error::{Result, user_error};

/// Version of the backup layout.
pub const FORMAT: u32 = 1;

/// What one backup holds: `backups/<backup_id>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// The backup's name: `backup-<created_at>`.
    pub backup_id: String,
    /// When it was taken (microseconds since the Unix epoch, UTC).
    pub created_at: i64,
    /// The cluster it was taken from.
    pub cluster_id: String,
    /// Commit time of the newest commit it holds: its recovery point.
    pub last_commit_at: i64,
    /// SHA-256 of `catalog.qsnp`, hex.
    pub catalog_sha256: String,
    /// Length of `catalog.qsnp`.
    pub catalog_bytes: u64,
    /// Every data file the catalog lists.
    pub files: Vec<BackedUpFile>,
}

/// One data file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpFile {
    /// The chunk id, 32 hex digits.
    pub chunk: String,
    /// SHA-256 of its bytes, hex: its name under `chunks/`.
    pub sha256: String,
    /// Its length.
    pub size_bytes: u64,
    /// Its CRC-32C, as the catalog records it.
    pub checksum_crc32c: u32,
}

impl BackedUpFile {
    /// The chunk id.
    ///
    /// # Errors
    /// 22P02 when the manifest's id is not 32 hex digits.
    pub fn chunk_id(&self) -> Result<ChunkId> {
        u128::from_str_radix(&self.chunk, 16)
            .map(ChunkId)
            .map_err(|_| damaged(format!("chunk id {:?} is not hex", self.chunk)))
    }
}

/// What `BACKUP TO` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The new backup's name.
    pub backup_id: String,
    /// Data files it holds.
    pub files: u64,
    /// Of those, the ones copied now (the others were in the directory).
    pub files_copied: u64,
    /// Bytes of the files copied now.
    pub bytes_copied: u64,
    /// Bytes of its catalog.
    pub catalog_bytes: u64,
}

/// What `quarry backup verify` checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The newest backup's manifest.
    pub manifest: Manifest,
    /// Tables in its catalog.
    pub tables: usize,
}

fn damaged(message: String) -> crate::error::Error {
    user_error(SqlState::DATA_CORRUPTED, message)
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> crate::error::Error {
    let path = path.display().to_string();
    let what = what.to_owned();
    move |e| user_error(SqlState::IO_ERROR, format!("cannot {what} {path}: {e}"))
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` to `path` durably: a temporary file, fsynced, renamed,
/// the directory fsynced.
fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp).map_err(io(&temp, "create"))?;
    file.write_all(data).map_err(io(&temp, "write"))?;
    file.sync_all().map_err(io(&temp, "sync"))?;
    fs::rename(&temp, path).map_err(io(path, "rename to"))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync"))?;
    Ok(())
}

/// Every manifest in `dir`, oldest first.
fn manifests(dir: &Path) -> Result<Vec<(PathBuf, Manifest)>> {
    let backups = dir.join("backups");
    if !backups.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(&backups).map_err(io(&backups, "list"))? {
        let path = entry.map_err(io(&backups, "list"))?.path();
        let file = path.join("manifest.json");
        if !file.exists() {
            // A backup that did not finish: its manifest is written last.
            continue;
        }
        let text = fs::read(&file).map_err(io(&file, "read"))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| damaged(format!("{}: {e}", file.display())))?;
        found.push((path, manifest));
    }
    found.sort_by_key(|(_, m)| m.created_at);
    Ok(found)
}

/// The data files `catalog` lists whose bytes are in stripes, by chunk:
/// not the ingest buffer's (their bytes are in the catalog itself) nor
/// buffered files the compactor has moved (their rows are read from the
/// files they moved to).
pub fn stored_files(catalog: &Catalog) -> Vec<quarry_common::catalog::DataFile> {
    let mut files: Vec<_> = catalog
        .tables
        .values()
        .map(|t| t.as_ref())
        .chain(catalog.dropped.iter().map(|d| d.table.as_ref()))
        .flat_map(|t| {
            t.files
                .iter()
                .filter(|e| {
                    !t.buffer.contains_key(&e.file.chunk) && !t.moved.contains_key(&e.file.chunk)
                })
                .map(|e| e.file.clone())
        })
        .chain(
            catalog
                .pending
                .values()
                .flat_map(|p| p.files.iter().cloned()),
        )
        .collect();
    files.sort_by_key(|f| f.chunk);
    files.dedup_by_key(|f| f.chunk);
    files
}

/// Writes a backup of `catalog` and the data files it lists (read through
/// `store`) into `dir`, copying only the files no earlier backup there
/// holds. The manifest is written last: a backup cut short leaves no
/// manifest and is not listed.
///
/// # Errors
/// 58030 when `dir` cannot be written; a data file's read error (a file
/// retention expired while the backup ran: run it again).
pub async fn create(
    catalog: &Catalog,
    store: &dyn DataFileStore,
    dir: &Path,
) -> Result<BackupSummary> {
    let chunks_dir = dir.join("chunks");
    fs::create_dir_all(&chunks_dir).map_err(io(&chunks_dir, "create"))?;
    // The files earlier backups hold, by chunk id (chunks never change).
    let mut known: HashMap<String, BackedUpFile> = HashMap::new();
    for (_, manifest) in manifests(dir)? {
        for file in manifest.files {
            known.insert(file.chunk.clone(), file);
        }
    }
    let files = stored_files(catalog);
    let mut backed_up = Vec::with_capacity(files.len());
    let (mut files_copied, mut bytes_copied) = (0u64, 0u64);
    for file in &files {
        let id = file.chunk.to_string();
        if let Some(earlier) = known.get(&id)
            && chunks_dir.join(&earlier.sha256).exists()
        {
            backed_up.push(earlier.clone());
            continue;
        }
        let data = store
            .get(quarry_storage::ChunkRef {
                id: file.chunk,
                size_bytes: file.size_bytes,
                checksum_crc32c: file.checksum_crc32c,
            })
            .await
            .map_err(|e| {
                user_error(
                    SqlState::IO_ERROR,
                    format!("cannot read data file {id} for the backup: {e}"),
                )
            })?;
        let sha256 = sha256_hex(&data);
        let path = chunks_dir.join(&sha256);
        if !path.exists() {
            let copied = data.len() as u64;
            tokio::task::spawn_blocking(move || write_durably(&path, &data))
                .await
                .map_err(|e| user_error(SqlState::INTERNAL_ERROR, e.to_string()))??;
            files_copied += 1;
            bytes_copied += copied;
        }
        backed_up.push(BackedUpFile {
            chunk: id,
            sha256,
            size_bytes: file.size_bytes,
            checksum_crc32c: file.checksum_crc32c,
        });
    }
    let mut snapshot = Vec::new();
    quarry_raft::snapshot_file::write(catalog, &mut snapshot).map_err(|e| {
        user_error(
            SqlState::INTERNAL_ERROR,
            format!("cannot encode the catalog: {e}"),
        )
    })?;
    let created_at = quarry_raft::now_micros();
    let backup_id = format!("backup-{created_at}");
    let backup_dir = dir.join("backups").join(&backup_id);
    fs::create_dir_all(&backup_dir).map_err(io(&backup_dir, "create"))?;
    write_durably(&backup_dir.join("catalog.qsnp"), &snapshot)?;
    let manifest = Manifest {
        format: FORMAT,
        backup_id: backup_id.clone(),
        created_at,
        cluster_id: ChunkId(catalog.cluster_id).to_string(),
        last_commit_at: catalog.last_commit_at,
        catalog_sha256: sha256_hex(&snapshot),
        catalog_bytes: snapshot.len() as u64,
        files: backed_up,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest encodes");
    write_durably(&backup_dir.join("manifest.json"), &json)?;
    Ok(BackupSummary {
        backup_id,
        files: manifest.files.len() as u64,
        files_copied,
        bytes_copied,
        catalog_bytes: snapshot.len() as u64,
    })
}

/// The newest backup in `dir`: its manifest and catalog, the catalog
/// checked against the manifest's SHA-256.
///
/// # Errors
/// 58030 when `dir` holds no backup or cannot be read; XX001 when the
/// catalog does not match its manifest or does not decode.
pub fn newest(dir: &Path) -> Result<(Manifest, Catalog)> {
    let Some((path, manifest)) = manifests(dir)?.pop() else {
        return Err(user_error(
            SqlState::IO_ERROR,
            format!("{} holds no backup", dir.display()),
        ));
    };
    if manifest.format != FORMAT {
        return Err(damaged(format!(
            "backup {} has layout version {}, this build reads {FORMAT}",
            manifest.backup_id, manifest.format
        )));
    }
    let file = path.join("catalog.qsnp");
    let snapshot = fs::read(&file).map_err(io(&file, "read"))?;
    if sha256_hex(&snapshot) != manifest.catalog_sha256 {
        return Err(damaged(format!(
            "{}: its SHA-256 is not the manifest's",
            file.display()
        )));
    }
    let catalog = quarry_raft::snapshot_file::read(snapshot.as_slice())
        .map_err(|e| damaged(format!("{}: {e}", file.display())))?;
    Ok((manifest, catalog))
}

/// The bytes of `file` from backup directory `dir`, checked against its
/// SHA-256, length and CRC-32C.
///
/// # Errors
/// 58030 when it cannot be read; XX001 when it does not match.
pub fn read_file(dir: &Path, file: &BackedUpFile) -> Result<Bytes> {
    let path = dir.join("chunks").join(&file.sha256);
    let data = fs::read(&path).map_err(io(&path, "read"))?;
    if data.len() as u64 != file.size_bytes
        || crc32c::crc32c(&data) != file.checksum_crc32c
        || sha256_hex(&data) != file.sha256
    {
        return Err(damaged(format!(
            "data file {} ({}) does not match its checksums",
            file.chunk,
            path.display()
        )));
    }
    Ok(Bytes::from(data))
}

/// Checks the newest backup in `dir`: its catalog decodes and matches its
/// manifest, the manifest lists every data file the catalog does, and each
/// file is present with its SHA-256, length and CRC-32C.
///
/// # Errors
/// The first problem found, naming the file.
pub fn verify(dir: &Path) -> Result<Verified> {
    let (manifest, catalog) = newest(dir)?;
    let listed: std::collections::HashSet<&str> =
        manifest.files.iter().map(|f| f.chunk.as_str()).collect();
    for chunk in stored_files(&catalog).iter().map(|f| f.chunk) {
        if !listed.contains(chunk.to_string().as_str()) {
            return Err(damaged(format!(
                "the catalog lists data file {chunk}, the manifest does not"
            )));
        }
    }
    for file in &manifest.files {
        file.chunk_id()?;
        read_file(dir, file)?;
    }
    Ok(Verified {
        tables: catalog.tables.len(),
        manifest,
    })
}
