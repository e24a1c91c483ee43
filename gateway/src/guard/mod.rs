//! Protocol guards' parsers (issue 14): the bytes a device sends, read just
//! far enough to name what it asks for (an HL7 message type, a Modbus
//! function and address range), with every length bounded before anything
//! is allocated, and the protocol's own refusal built. Not yet wired into
//! the data path: no policy key reaches these yet.

pub mod hl7;
pub mod modbus;
