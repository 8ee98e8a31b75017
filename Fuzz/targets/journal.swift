// Fuzz target: the journal scan. Any bytes scan to records and an ending
// (clean, torn tail, corrupt) without a crash; every record found encodes to
// bytes that scan back to the same record.
import BatonCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJournal(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let scan = JournalCodec.scan(UnsafeRawBufferPointer(start: data, count: size))
    for record in scan.records {
        let again = JournalCodec.scan(JournalCodec.encode(record))
        precondition(again.records == [record], "record \(record.sequence) does not survive a round trip")
    }
    return 0
}
