//! A CPU profile in the pprof format Go's `/debug/pprof/profile` answers
//! (gzipped `perftools.profiles.Profile`), so `go tool pprof` and every
//! tool that reads etcd's profiles read oxcd's. The messages below carry
//! the field numbers of pprof's profile.proto; only the fields a CPU
//! profile uses are declared.

use flate2::write::GzEncoder;
use flate2::Compression;
use pprof::{Frames, Report, Symbol};
use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::time::UNIX_EPOCH;

#[derive(Clone, PartialEq, Message)]
pub(super) struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Inlined functions first, their caller last.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Builds the profile: strings, functions and locations each stored once
/// and referred to by index or id, as the format wants.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Vec<(u64, i64)>, u64>,
}

impl Builder {
    fn new() -> Builder {
        let mut b = Builder::default();
        // Index 0 is the empty string, always.
        b.string("");
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = i64::try_from(self.strings.len()).unwrap_or(i64::MAX);
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn function(&mut self, symbol: &Symbol) -> u64 {
        let name = symbol.name();
        let file = symbol
            .filename
            .as_ref()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(&id) = self.function_ids.get(&(name.clone(), file.clone())) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let system_name = String::from_utf8_lossy(symbol.raw_name()).into_owned();
        let f = Function {
            id,
            name: self.string(&name),
            system_name: self.string(&system_name),
            filename: self.string(&file),
        };
        self.functions.push(f);
        self.function_ids.insert((name, file), id);
        id
    }

    /// One stack frame: the functions inlined at one address.
    fn location(&mut self, frame: &[Symbol]) -> u64 {
        let lines: Vec<(u64, i64)> = frame
            .iter()
            .map(|s| (self.function(s), i64::from(s.lineno.unwrap_or(0))))
            .collect();
        if let Some(&id) = self.location_ids.get(&lines) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            line: lines
                .iter()
                .map(|&(function_id, line)| Line { function_id, line })
                .collect(),
        });
        self.location_ids.insert(lines, id);
        id
    }

    fn sample(&mut self, frames: &Frames, count: isize, period: i64) -> Sample {
        let location_id = frames
            .frames
            .iter()
            .skip_while(|f| is_profiler(f))
            .map(|f| self.location(f))
            .collect();
        let count = i64::try_from(count).unwrap_or(0);
        let label = vec![Label {
            key: self.string("thread"),
            str: self.string(&frames.thread_name_or_id()),
        }];
        Sample {
            location_id,
            value: vec![count, count.saturating_mul(period)],
            label,
        }
    }
}

/// Whether a frame is the profiler's own, taking the sample (the leaf
/// end of every stack; Go's profiles do not show them either).
fn is_profiler(frame: &[Symbol]) -> bool {
    frame.iter().any(|s| {
        let name = s.name();
        name.starts_with("backtrace::") || name.contains("pprof::")
    })
}

/// The report as Go's CPU profile: sample types `samples/count` and
/// `cpu/nanoseconds`, the sampling period in nanoseconds.
pub(super) fn profile(report: &Report) -> Profile {
    let mut b = Builder::new();
    let frequency = i64::from(report.timing.frequency.max(1));
    let period = 1_000_000_000 / frequency;
    let samples = report
        .data
        .iter()
        .map(|(frames, &count)| b.sample(frames, count, period))
        .collect();
    let samples_type = ValueType {
        r#type: b.string("samples"),
        unit: b.string("count"),
    };
    let cpu_type = ValueType {
        r#type: b.string("cpu"),
        unit: b.string("nanoseconds"),
    };
    let time_nanos = report
        .timing
        .start_time
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Profile {
        sample_type: vec![samples_type, cpu_type.clone()],
        sample: samples,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos,
        duration_nanos: i64::try_from(report.timing.duration.as_nanos()).unwrap_or(i64::MAX),
        period_type: Some(cpu_type),
        period,
    }
}

/// The encoded profile, gzipped as Go serves it.
pub(super) fn gzipped(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn symbol(name: &str, line: u32) -> Symbol {
        Symbol {
            name: Some(name.as_bytes().to_vec()),
            addr: None,
            lineno: Some(line),
            filename: Some("src/x.rs".into()),
        }
    }

    #[test]
    fn strings_functions_and_locations_are_stored_once() {
        let mut b = Builder::new();
        let leaf = vec![symbol("leaf", 3), symbol("inlined_into", 9)];
        let root = vec![symbol("main", 1)];
        let a = b.location(&leaf);
        let c = b.location(&root);
        assert_eq!(b.location(&leaf), a);
        assert_ne!(a, c);
        assert_eq!(b.functions.len(), 3);
        assert_eq!(b.strings[0], "");
        // One "src/x.rs" however many functions live in it.
        assert_eq!(b.strings.iter().filter(|s| *s == "src/x.rs").count(), 1);
        let loc = &b.locations[usize::try_from(a - 1).expect("id")];
        assert_eq!(loc.line.len(), 2);
        assert_eq!(loc.line[1].line, 9);
    }

    #[test]
    fn the_profilers_own_frames_are_left_out() {
        let mut b = Builder::new();
        let frames = Frames {
            frames: vec![
                vec![symbol("backtrace::backtrace::trace_unsynchronized", 1)],
                vec![symbol(
                    "<pprof::backtrace::Trace as pprof::backtrace::Trace>::trace",
                    2,
                )],
                vec![symbol("work", 3)],
                vec![symbol("main", 4)],
            ],
            thread_name: "t".into(),
            thread_id: 1,
            sample_timestamp: UNIX_EPOCH,
        };
        let sample = b.sample(&frames, 2, 10);
        assert_eq!(sample.location_id.len(), 2);
        assert_eq!(sample.value, vec![2, 20]);
        let leaf = &b.locations[usize::try_from(sample.location_id[0] - 1).expect("id")];
        let f = &b.functions[usize::try_from(leaf.line[0].function_id - 1).expect("id")];
        assert_eq!(b.strings[usize::try_from(f.name).expect("index")], "work");
    }

    #[test]
    fn gzipped_profiles_decode() {
        let p = Profile {
            string_table: vec![String::new(), "samples".into()],
            period: 10_000_000,
            ..Profile::default()
        };
        let gz = gzipped(&p).expect("gzip");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .expect("gunzip");
        assert_eq!(Profile::decode(&raw[..]).expect("decode"), p);
    }
}
