//! Where each field of a YAML file sits, so that a problem found after parsing (a missing
//! file, a bad address) can still name its line.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// Field paths (`ingress.upstream.backends[1]`) mapped to 1-based line numbers.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    lines: HashMap<String, usize>,
}

impl SourceMap {
    /// Indexes every mapping key and sequence item of `text`. A text the parser rejects
    /// yields the entries read before the error, which is all a caller can point at.
    pub fn index(text: &str) -> Self {
        let mut map = Self::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line();
            match event {
                Event::Scalar(value, ..) => map.scalar(&mut stack, &value, line),
                Event::MappingStart(..) => map.open(&mut stack, Frame::mapping(), line),
                Event::SequenceStart(..) => map.open(&mut stack, Frame::sequence(), line),
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        map
    }

    /// The line of `path`, or of its closest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    fn scalar(&mut self, stack: &mut [Frame], value: &str, line: usize) {
        let Some(frame) = stack.last_mut() else {
            return;
        };
        if let Frame::Mapping { path, pending_key } = frame {
            if pending_key.is_none() {
                let key = join_key(path, value);
                self.lines.insert(key.clone(), line);
                *pending_key = Some(key);
                return;
            }
        }
        frame.take_child_path(&mut self.lines, line);
    }

    fn open(&mut self, stack: &mut Vec<Frame>, mut frame: Frame, line: usize) {
        let path = match stack.last_mut() {
            Some(parent) => parent.take_child_path(&mut self.lines, line),
            None => String::new(),
        };
        frame.set_path(path);
        stack.push(frame);
    }
}

enum Frame {
    Mapping {
        path: String,
        pending_key: Option<String>,
    },
    Sequence {
        path: String,
        next_index: usize,
    },
}

impl Frame {
    fn mapping() -> Self {
        Frame::Mapping {
            path: String::new(),
            pending_key: None,
        }
    }

    fn sequence() -> Self {
        Frame::Sequence {
            path: String::new(),
            next_index: 0,
        }
    }

    fn set_path(&mut self, new_path: String) {
        match self {
            Frame::Mapping { path, .. } | Frame::Sequence { path, .. } => *path = new_path,
        }
    }

    /// The path of the value that starts now inside this container, recording its line
    /// when it is a sequence item (a mapping value's line is its key's).
    fn take_child_path(&mut self, lines: &mut HashMap<String, usize>, line: usize) -> String {
        match self {
            Frame::Mapping { path, pending_key } => {
                pending_key.take().unwrap_or_else(|| join_key(path, "?"))
            }
            Frame::Sequence { path, next_index } => {
                let child = format!("{path}[{next_index}]");
                *next_index += 1;
                lines.entry(child.clone()).or_insert(line);
                child
            }
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
listen:
  - \"127.0.0.1:1\"
  - \"[::1]:2\"
ingress:
  hostname: a
  upstream:
    backends: [x, y]
";

    #[test]
    fn keys_and_items_are_found_by_path() {
        let map = SourceMap::index(TEXT);
        assert_eq!(map.line_of("listen"), Some(1));
        assert_eq!(map.line_of("listen[1]"), Some(3));
        assert_eq!(map.line_of("ingress.hostname"), Some(5));
        assert_eq!(map.line_of("ingress.upstream.backends[1]"), Some(7));
    }

    #[test]
    fn an_unknown_path_falls_back_to_its_parent() {
        let map = SourceMap::index(TEXT);
        assert_eq!(map.line_of("ingress.upstream.connect_timeout"), Some(6));
        assert_eq!(map.line_of("nothing"), None);
    }
}
