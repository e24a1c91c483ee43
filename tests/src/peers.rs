//! Real protocol peers nobody here wrote: dcmtk's `storescu`/`storescp`,
//! `mllp_send` and the MLLP server of the Python `hl7` package, `openssl`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{TempDir, wait_tcp};

/// A child process killed on drop.
pub struct Peer {
    child: Child,
    name: &'static str,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its name, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The dcmtk program `tool`, resolved unambiguously: other packages install
/// commands of the same names (pynetdicom's console scripts `storescp`,
/// `storescu`, `echoscu`, `findscu`, `movescu`), so the first one on `PATH`
/// is used only when its `--version` names dcmtk; otherwise Debian's
/// `/usr/bin` copy. Panics, saying what was found instead, when there is none.
pub fn dcmtk(tool: &str) -> PathBuf {
    static FOUND: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut found = FOUND.lock().expect("dcmtk cache");
    if let Some((_, p)) = found.iter().find(|(t, _)| t == tool) {
        return p.clone();
    }
    let p = resolve_dcmtk(tool, std::env::var_os("PATH")).unwrap_or_else(|e| panic!("{e}"));
    found.push((tool.to_owned(), p.clone()));
    p
}

/// [`dcmtk`] for a given `PATH`.
fn resolve_dcmtk(tool: &str, path: Option<std::ffi::OsString>) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = path
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(tool))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    candidates.push(Path::new("/usr/bin").join(tool));
    let mut seen = Vec::new();
    for c in candidates {
        let Ok(out) = Command::new(&c).arg("--version").output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&out.stdout);
        if version.contains("$dcmtk:") {
            return Ok(c);
        }
        let first = version.lines().next().unwrap_or("(no output)").to_owned();
        seen.push(format!("{} ({first})", c.display()));
    }
    Err(format!(
        "dcmtk's {tool} not found (install the Debian package dcmtk); found instead: {}",
        if seen.is_empty() {
            "nothing".to_owned()
        } else {
            seen.join(", ")
        }
    ))
}

/// Make a DICOM Secondary Capture file from a generated `side`×`side` RGB
/// bitmap with dcmtk's `img2dcm`.
pub fn make_dicom(dir: &TempDir, side: u32) -> PathBuf {
    let row = (side * 3 + 3) & !3;
    let mut pixels = Vec::with_capacity((row * side) as usize);
    for y in 0..side {
        for x in 0..side {
            pixels.extend_from_slice(&[(x * 7) as u8, (y * 3) as u8, ((x ^ y) * 5) as u8]);
        }
        pixels.resize(pixels.len() + (row - side * 3) as usize, 0);
    }
    let mut bmp = Vec::new();
    bmp.extend_from_slice(b"BM");
    bmp.extend_from_slice(&(54 + pixels.len() as u32).to_le_bytes());
    bmp.extend_from_slice(&[0, 0, 0, 0]);
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&(side as i32).to_le_bytes());
    bmp.extend_from_slice(&(side as i32).to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.extend_from_slice(&0u32.to_le_bytes());
    bmp.extend_from_slice(&(pixels.len() as u32).to_le_bytes());
    bmp.extend_from_slice(&[0x13, 0x0b, 0, 0, 0x13, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    bmp.extend_from_slice(&pixels);
    let bmp_path = dir.join("image.bmp");
    std::fs::write(&bmp_path, bmp).expect("write bmp");
    let dcm = dir.join("image.dcm");
    let out = Command::new(dcmtk("img2dcm"))
        .args(["-i", "BMP"])
        .arg(&bmp_path)
        .arg(&dcm)
        .output()
        .expect("run img2dcm (install dcmtk)");
    assert!(
        out.status.success(),
        "img2dcm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A CT image, as a CT stores it (img2dcm writes secondary capture);
    // dcmodify updates the file meta header's SOP class to match.
    let out = Command::new(dcmtk("dcmodify"))
        .args([
            "-nb",
            "-i",
            "(0008,0016)=1.2.840.10008.5.1.4.1.1.2",
            "-i",
            "(0008,0060)=CT",
        ])
        .arg(&dcm)
        .output()
        .expect("run dcmodify (install dcmtk)");
    assert!(
        out.status.success(),
        "dcmodify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dcm
}

/// The dataset of a DICOM file without its preamble and file meta header,
/// which a receiving SCP rewrites.
pub fn dataset(path: &Path) -> Vec<u8> {
    let data = std::fs::read(path).expect("read dicom file");
    assert_eq!(
        &data[128..132],
        b"DICM",
        "{} is not a DICOM file",
        path.display()
    );
    // (0002,0000) UL group length, explicit VR little endian: tag(4) VR(2) len(2) value(4).
    let group_len = u32::from_le_bytes(data[140..144].try_into().expect("4 bytes")) as usize;
    data[144 + group_len..].to_vec()
}

/// dcmtk `storescp` on `addr`, storing into `out` bit-preserving.
pub fn storescp(addr: SocketAddr, out: &Path, extra: &[&str]) -> Peer {
    std::fs::create_dir_all(out).expect("create storescp dir");
    // storescp binds all interfaces unless told otherwise; dcmtk 3.6.7 has no
    // bind-address option, so each test gives it its own port.
    let child = Command::new(dcmtk("storescp"))
        .arg("--output-directory")
        .arg(out)
        .arg("--bit-preserving")
        .args(extra)
        .arg(addr.port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storescp (install dcmtk)");
    wait_tcp(
        SocketAddr::new([127, 0, 0, 1].into(), addr.port()),
        Duration::from_secs(10),
    );
    Peer {
        child,
        name: "storescp",
    }
}

/// dcmtk `storescu` sending `file` to `addr`.
pub fn storescu(addr: SocketAddr, file: &Path, extra: &[&str]) -> Output {
    Command::new(dcmtk("storescu"))
        .args(["-aec", "PACS", "-aet", "WARDTEST"])
        .args(extra)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(file)
        .output()
        .expect("run storescu (install dcmtk)")
}

/// A long DICOM association: dcmtk `echoscu` to `addr` repeating C-ECHO
/// every two seconds on one association, its log in `log` (for [`echoes`]).
/// `extra` goes before the address (e.g. TLS options).
pub fn echoscu_held(addr: SocketAddr, log: &Path, extra: &[&str]) -> Peer {
    let file = std::fs::File::create(log).expect("echoscu log");
    let child = Command::new(dcmtk("echoscu"))
        .args(["-v", "-aec", "MONITOR", "--repeat", "100000000", "-td", "2"])
        .args(extra)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .stdout(file.try_clone().expect("clone log"))
        .stderr(file)
        .spawn()
        .expect("spawn echoscu (install dcmtk)");
    Peer {
        child,
        name: "echoscu",
    }
}

/// C-ECHO responses an `echoscu -v` logged to `log` so far.
pub fn echoes(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("Received Echo Response")
        .count()
}

/// What an Orthanc PACS in a test is given.
pub struct OrthancSetup<'a> {
    /// Scratch directory for its configuration, database and log.
    pub dir: &'a Path,
    /// Its DICOM port (it listens on every address: Orthanc 1.10 has no
    /// bind-address option; its HTTP server is off).
    pub port: u16,
    /// Its TLS certificate and key (one pair for incoming and outgoing
    /// associations), and the CA file it trusts for its peers.
    pub cert: &'a Path,
    /// Its key.
    pub key: &'a Path,
    /// CA certificates it trusts (its callers' and the C-MOVE destinations').
    pub trusted: &'a Path,
    /// C-MOVE destinations: (AE title, host, port), reached over DICOM TLS.
    pub modalities: &'a [(&'a str, std::net::IpAddr, u16)],
}

/// Orthanc from Debian as a DICOM TLS PACS (AE `ORTHANC`) requiring client
/// certificates, storing anything, answering C-MOVE to its known modalities
/// (checked by AE title and host).
pub fn orthanc(setup: &OrthancSetup<'_>) -> Peer {
    let dir = setup.dir;
    std::fs::create_dir_all(dir.join("db")).expect("orthanc dir");
    let modalities: serde_json::Map<String, serde_json::Value> = setup
        .modalities
        .iter()
        .map(|(aet, host, port)| {
            (
                (*aet).to_owned(),
                serde_json::json!({
                    "AET": aet, "Host": host.to_string(), "Port": port,
                    "UseDicomTls": true, "AllowMove": true,
                }),
            )
        })
        .collect();
    let config = serde_json::json!({
        "Name": "ward-test-pacs",
        "StorageDirectory": dir.join("db"),
        "IndexDirectory": dir.join("db"),
        "Plugins": [],
        "HttpServerEnabled": false,
        "DicomServerEnabled": true,
        "DicomAet": "ORTHANC",
        "DicomPort": setup.port,
        "DicomCheckCalledAet": false,
        "DicomCheckModalityHost": true,
        "DicomAlwaysAllowEcho": true,
        "DicomAlwaysAllowStore": true,
        "DicomAlwaysAllowMove": false,
        "DicomScuTimeout": 10,
        "DicomTlsEnabled": true,
        "DicomTlsCertificate": setup.cert,
        "DicomTlsPrivateKey": setup.key,
        "DicomTlsTrustedCertificates": setup.trusted,
        "DicomTlsRemoteCertificateRequired": true,
        "DicomModalities": modalities,
    });
    let path = dir.join("orthanc.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
    let bin = ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("Orthanc");
    let child = Command::new(bin)
        .arg("--verbose")
        .arg(format!("--logfile={}", dir.join("orthanc.log").display()))
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn Orthanc (install orthanc)");
    wait_tcp(
        SocketAddr::new([127, 0, 0, 1].into(), setup.port),
        Duration::from_secs(30),
    );
    Peer {
        child,
        name: "Orthanc",
    }
}

/// An attribute of a DICOM file, e.g. `0020,000d` (Study Instance UID).
pub fn attribute(file: &Path, tag: &str) -> String {
    let out = Command::new(dcmtk("dcmdump"))
        .args(["-q", "+P", tag])
        .arg(file)
        .output()
        .expect("run dcmdump (install dcmtk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (Some(a), Some(b)) = (text.find('['), text.find(']')) else {
        panic!("{tag} not in {}: {text}", file.display());
    };
    text[a + 1..b].to_owned()
}

/// dcmtk `movescu`: a study-root C-MOVE of `study` from the SCP at `addr`
/// (called `called`) to the move destination `dest`, which is this movescu
/// itself, receiving on `port` into `out`.
pub fn movescu(
    addr: SocketAddr,
    called: &str,
    dest: &str,
    port: u16,
    study: &str,
    out: &Path,
) -> Output {
    std::fs::create_dir_all(out).expect("movescu dir");
    Command::new(dcmtk("movescu"))
        .args(["-v", "-S", "-aet", dest, "-aec", called, "-aem", dest])
        .args(["--port", &port.to_string()])
        .arg("--output-directory")
        .arg(out)
        .args(["-k", "QueryRetrieveLevel=STUDY"])
        .args(["-k", &format!("StudyInstanceUID={study}")])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()
        .expect("run movescu (install dcmtk)")
}

/// The single file `storescp` stored in `dir`.
pub fn stored_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read storescp dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "expected one stored file in {}, found {files:?}",
        dir.display()
    );
    files.into_iter().next().expect("one file")
}

const MLLP_SERVER: &str = r#"
import asyncio, sys
import hl7
from hl7.mllp import start_hl7_server

async def process(reader, writer):
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except asyncio.IncompleteReadError:
        if not writer.is_closing():
            writer.close()
            await writer.wait_closed()

async def main(host, port):
    async with await start_hl7_server(process, host, port) as server:
        await server.serve_forever()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

/// An HL7 MLLP receiver that answers every message with an ACK, built on the
/// `hl7` package's MLLP server.
pub fn mllp_server(dir: &TempDir, addr: SocketAddr) -> Peer {
    let script = dir.join("mllp_server.py");
    std::fs::write(&script, MLLP_SERVER).expect("write mllp server");
    let child = Command::new("python3")
        .arg(&script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3 mllp server (pip install hl7)");
    wait_tcp(addr, Duration::from_secs(10));
    Peer {
        child,
        name: "mllp server",
    }
}

/// An ORU^R01 message as an infusion pump sends it: the infusion rate as an
/// observation (the example policy's pump flows allow ORU^R01 only).
pub fn hl7_message(control_id: &str) -> String {
    [
        format!("MSH|^~\\&|PUMP|ICU|HIS|ST-MARY|20261126120000||ORU^R01|{control_id}|P|2.5"),
        "PID|1||4711^^^ST-MARY^MR||DOE^JANE||19600101|F".to_owned(),
        "OBR|1|||rate^Infusion rate".to_owned(),
        "OBX|1|NM|rate^Infusion rate||12|mL/h|||||F".to_owned(),
    ]
    .join("\r")
}

/// `mllp_send` (from the `hl7` package) sending `message` to `addr`; its stdout holds the ACK.
pub fn mllp_send(dir: &TempDir, addr: SocketAddr, message: &str) -> Output {
    let file = dir.join("message.hl7");
    // mllp_send reads a stream of MLLP-framed messages: VT message FS CR.
    let framed = format!("\x0b{message}\x1c\r");
    std::fs::write(&file, framed).expect("write message");
    Command::new("mllp_send")
        .arg("--port")
        .arg(addr.port().to_string())
        .arg("--file")
        .arg(&file)
        .arg(addr.ip().to_string())
        .output()
        .expect("run mllp_send (pip install hl7)")
}

/// A TCP echo server on a thread, for flows that must stay up.
pub fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind echo");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A same-named program that is not dcmtk's (pynetdicom's console
    /// script, say) is passed over for dcmtk's own; with no dcmtk copy at
    /// all, the error names what was found.
    #[test]
    fn dcmtk_tools_resolve_past_same_named_programs() {
        let dir = TempDir::new("dcmtk-resolve");
        for tool in ["storescp", "wardtest-nodcmtk"] {
            let fake = dir.join(tool);
            std::fs::write(&fake, "#!/bin/sh\necho 'pynetdicom 2.1.1'\n").expect("write");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = Some(dir.path().as_os_str().to_owned());
        if Path::new("/usr/bin/storescp").is_file() {
            assert_eq!(
                resolve_dcmtk("storescp", path.clone()),
                Ok(PathBuf::from("/usr/bin/storescp"))
            );
        } else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI installs dcmtk"
            );
        }
        let err = resolve_dcmtk("wardtest-nodcmtk", path).expect_err("no dcmtk copy");
        assert!(
            err.contains(&dir.join("wardtest-nodcmtk").display().to_string())
                && err.contains("pynetdicom 2.1.1"),
            "{err}"
        );
    }
}
