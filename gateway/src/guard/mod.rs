//! Protocol guards (issue 14): the bytes a device sends, read just far
//! enough to name what it asks for (an HL7 message type, a Modbus function
//! and address range), with every length bounded before anything is
//! allocated, and the protocol's own refusal built. HL7 guards are wired
//! into the outbound leg ([`stream`]); the Modbus parser is not used yet.

pub mod hl7;
pub mod modbus;
pub mod stream;
