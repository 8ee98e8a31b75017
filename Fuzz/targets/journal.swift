// Fuzz target: the journal scan. Any bytes scan to records and an ending
// (clean, torn tail, corrupt) without a crash; every record found encodes to
// bytes that scan back to the same record.
import BatonCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJournal(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let scan = JournalCodec.scan(bytes)
    // After a power cut the scan looks for durability claims past a bad record: the same records before it.
    precondition(JournalCodec.scan(bytes, afterPowerCut: true).records == scan.records, "the two scans disagree")
    for record in scan.records {
        let again = JournalCodec.scan(JournalCodec.encode(record, durableThrough: 0))
        precondition(again.records == [record], "record \(record.sequence) does not survive a round trip")
    }
    return 0
}
