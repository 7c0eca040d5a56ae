//! How to create or open an [`Arena`]: [`ArenaOptions`] and [`OpenOptions`], with their
//! defaults.

use std::time::Duration;

use crate::arena::{tree_of, Arena};
use crate::error::CreateError;
use crate::layout::{Layout, LayoutError};
use crate::segment::{Segment, SegmentName};

/// Prefix of a random segment name when [`ArenaOptions::name_prefix`] is not set. It is the
/// prefix the workspace's leak check and `shm-ndarray`'s pools look for; any other valid name
/// prefix works as well.
pub const DEFAULT_NAME_PREFIX: &str = "pyshm-";
/// Default minimum block: 64 bytes.
pub const DEFAULT_MIN_BLOCK: u64 = 64;
/// Default number of owner slots.
pub const DEFAULT_OWNER_SLOTS: u32 = 128;
/// Default time an opener waits for a segment's creator to finish.
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(2);

/// How to create an arena.
///
/// # Examples
///
/// ```
/// use shm_arena::ArenaOptions;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let arena = ArenaOptions::new(1 << 20).min_block(256).create_anonymous()?;
/// assert_eq!(arena.capacity(), 1 << 20);
/// assert_eq!(arena.min_block(), 256);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ArenaOptions {
    capacity: u64,
    min_block: u64,
    owner_slots: u32,
    name: Option<String>,
    name_prefix: String,
    populate: bool,
    reserve_whole: bool,
    cache_max_block: Option<u64>,
}

impl ArenaOptions {
    /// Options for an arena of `capacity` bytes (rounded up to the minimum block).
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            min_block: DEFAULT_MIN_BLOCK,
            owner_slots: DEFAULT_OWNER_SLOTS,
            name: None,
            name_prefix: DEFAULT_NAME_PREFIX.to_owned(),
            populate: false,
            reserve_whole: false,
            cache_max_block: None,
        }
    }

    /// Reserve every page of the segment at creation, as every segment did before layout version 2 (default
    /// `false`: the segment is sparse and a block's pages are reserved when it is handed out).
    ///
    /// Whole reservation makes creation cost about 2 us per page and holds the whole capacity
    /// from `/dev/shm` until the segment is gone; in exchange no allocation ever makes a
    /// syscall, and [`Arena::free_and_release`] and [`Arena::release_free`] give nothing back.
    pub fn reserve_whole(mut self, whole: bool) -> Self {
        self.reserve_whole = whole;
        self
    }

    /// Minimum block size and alignment: a power of two from 16 bytes to 1 MiB (default 64).
    pub fn min_block(mut self, bytes: u64) -> Self {
        self.min_block = bytes;
        self
    }

    /// How many arenas (processes, or handles within one) may use the segment at once.
    pub fn owner_slots(mut self, slots: u32) -> Self {
        self.owner_slots = slots;
        self
    }

    /// A chosen segment name instead of a random one: any valid POSIX shared-memory name, 1 to
    /// 255 printable ASCII characters, no `/`, not `.` or `..` (see [`SegmentName::validate`]).
    /// Only for named segments ([`ArenaOptions::create`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_arena::ArenaOptions;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let name = format!("myapp-arena-{}", std::process::id());
    /// let arena = ArenaOptions::new(1 << 20).name(&name).create()?;
    /// assert_eq!(arena.name(), Some(name.as_str()));
    /// arena.unlink()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The start of a random name, when no [`name`](Self::name) is given (default
    /// [`DEFAULT_NAME_PREFIX`]); the name is this prefix then 32 hex digits from the kernel's
    /// random source. Pass the same prefix to [`list_segments`](crate::list_segments) to find
    /// the segments again.
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// Prefault the whole mapping at creation (`MAP_POPULATE`).
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }

    /// Largest block size this process caches after a free (0 disables the cache).
    /// Default: 4 KiB, or capacity / 4096 when that is smaller.
    pub fn cache_max_block(mut self, bytes: u64) -> Self {
        self.cache_max_block = Some(bytes);
        self
    }

    fn layout(&self) -> Result<Layout, CreateError> {
        Ok(Layout::new(self.min_block, self.capacity, self.owner_slots)?)
    }

    /// Bytes an arena made with these options holds from the system at creation (its
    /// metadata: header, owner table, tree and bitmap, rounded to a page), before any block
    /// is handed out. All of the segment for [`ArenaOptions::reserve_whole`].
    ///
    /// # Errors
    ///
    /// [`LayoutError`] for a geometry `create` would refuse.
    pub fn held_at_creation(&self) -> Result<u64, LayoutError> {
        let layout = Layout::new(self.min_block, self.capacity, self.owner_slots)?;
        Ok(if self.reserve_whole { layout.segment_size } else { layout.metadata_bytes() })
    }

    /// Creates a named segment (`/dev/shm/<name>`) that other processes can [`Arena::open`].
    ///
    /// # Errors
    ///
    /// [`CreateError`]: bad geometry or name, name taken, no room in /dev/shm, syscalls.
    pub fn create(&self) -> Result<Arena, CreateError> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => SegmentName::random(&self.name_prefix)?,
        };
        self.create_in(SegmentName::Named(name))
    }

    /// Creates an anonymous (memfd) segment, shared with children across `fork` or by passing
    /// its descriptor ([`Arena::fd`], [`Arena::open_fd`]).
    ///
    /// # Errors
    ///
    /// As for [`ArenaOptions::create`].
    pub fn create_anonymous(&self) -> Result<Arena, CreateError> {
        self.create_in(SegmentName::Anonymous)
    }

    fn create_in(&self, name: SegmentName) -> Result<Arena, CreateError> {
        let layout = self.layout()?;
        let segment = Segment::create(name, layout, self.populate, self.reserve_whole, |seg| {
            let tree = tree_of(seg);
            tree.reserve_tail(layout.capacity_leaves());
        })?;
        let arena = Arena::from_segment(segment, self.cache_max_block);
        match arena {
            Ok(a) => Ok(a),
            Err((segment, e)) => {
                if let SegmentName::Named(n) = segment.name() {
                    let _ = crate::segment::unlink(n);
                }
                Err(e.into())
            }
        }
    }
}

/// How to open an existing arena.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub(crate) populate: bool,
    pub(crate) wait: Duration,
    pub(crate) cache_max_block: Option<u64>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { populate: false, wait: DEFAULT_OPEN_WAIT, cache_max_block: None }
    }
}

impl OpenOptions {
    /// Default options: no prefaulting, wait up to 2 s for the creator.
    pub fn new() -> Self {
        Self::default()
    }
    /// Prefault the whole mapping (`MAP_POPULATE`): fewer page faults later.
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }
    /// How long to wait for a creator still initialising the segment.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
    /// As [`ArenaOptions::cache_max_block`].
    pub fn cache_max_block(mut self, bytes: u64) -> Self {
        self.cache_max_block = Some(bytes);
        self
    }
}
