/// Which epoch wrote each record a journal still holds (from its checkpoint
/// on), so that a server and a returning standby can find where their
/// histories part. One server per epoch (DESIGN.md §4.2) gives Raft's log
/// matching: two journals that hold a record of the same sequence and epoch
/// agree on every record up to it.
public struct JournalHistory: Hashable, Sendable {
    /// Records written in one epoch, from `first` on, up to the next run.
    public struct Run: Hashable, Sendable {
        public var first: UInt64
        public var epoch: UInt64

        public init(first: UInt64, epoch: UInt64) {
            self.first = first
            self.epoch = epoch
        }
    }

    /// In sequence order. The first run starts at the checkpoint's own
    /// sequence: the epoch of the checkpoint's last record is known, the
    /// epochs of the records before it are not.
    public private(set) var runs: [Run]
    /// The last record.
    public private(set) var last: UInt64

    /// A journal that starts at a checkpoint holding records up to `sequence`,
    /// the last of them written in `epoch` (0 and 0 for a new export).
    public init(checkpoint sequence: UInt64, epoch: UInt64) {
        runs = [Run(first: sequence, epoch: epoch)]
        last = sequence
    }

    /// Decoding: the runs must be in order and start no later than `last`.
    public init(runs: [Run], last: UInt64) throws(DecodeError) {
        guard let first = runs.first, first.first <= last,
              zip(runs, runs.dropFirst()).allSatisfy({ $0.first < $1.first && $0.epoch < $1.epoch && $1.first <= last }) else {
            throw .invalid("journal history out of order")
        }
        self.runs = runs
        self.last = last
    }

    /// The next record, which must follow the last one.
    public mutating func append(sequence: UInt64, epoch: UInt64) {
        precondition(sequence == last + 1, "record \(sequence) appended after \(last)")
        last = sequence
        if epoch != runs[runs.count - 1].epoch { runs.append(Run(first: sequence, epoch: epoch)) }
    }

    /// The journal after a checkpoint at `sequence`, which it holds: the
    /// records before it are gone, the checkpoint's own epoch is still known.
    public mutating func checkpointed(at sequence: UInt64) {
        guard let epoch = epoch(of: sequence) else { preconditionFailure("checkpoint at \(sequence) outside the journal \(runs[0].first)...\(last)") }
        runs = [Run(first: sequence, epoch: epoch)] + runs.filter { $0.first > sequence }
    }

    /// The epoch of record `sequence`, if this journal still knows it.
    public func epoch(of sequence: UInt64) -> UInt64? {
        guard sequence >= runs[0].first, sequence <= last else { return nil }
        return runs.last { $0.first <= sequence }!.epoch
    }

    /// The first sequence of the run that holds `sequence` (which this journal knows).
    private func runStart(of sequence: UInt64) -> UInt64 {
        runs.last { $0.first <= sequence }!.first
    }

    /// The last record that this journal and `other` both hold, written in
    /// the same epoch: both agree on every record up to it, and the records
    /// after it on either side are their own. Nil when the known parts of
    /// the two journals share no such record (one was checkpointed past it):
    /// only a full copy can then bring them together.
    public func divergencePoint(with other: JournalHistory) -> UInt64? {
        let floor = max(runs[0].first, other.runs[0].first)
        var sequence = min(last, other.last)
        while sequence >= floor {
            let mine = epoch(of: sequence)!, theirs = other.epoch(of: sequence)!
            if mine == theirs { return sequence }
            // Epochs only grow along a journal: inside the run of the higher
            // epoch, the other journal's epochs are all lower. Skip that run.
            let start = mine > theirs ? runStart(of: sequence) : other.runStart(of: sequence)
            guard start > 0 else { return nil }
            sequence = start - 1
        }
        return nil
    }
}

extension JournalRecord {
    /// The regular files whose data applying this record changed, given the
    /// effects the namespace gave for it: the file it writes and each file it
    /// truncated or freed. A file's other state (attributes, names, extended
    /// attributes) is in the namespace, which a catch-up copies whole.
    public func filesTouched(effects: [DataEffect]) -> [InodeNumber] {
        var inodes: [InodeNumber] = []
        if case .write(let ino, _, _, _) = operation { inodes.append(ino) }
        for effect in effects {
            switch effect {
            case .truncate(let ino, _), .remove(let ino): inodes.append(ino)
            }
        }
        return inodes
    }
}
