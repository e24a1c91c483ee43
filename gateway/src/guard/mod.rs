//! Protocol guards (issue 14): the bytes a device sends, read just far
//! enough to name what it asks for (DICOM AE titles, presentation contexts
//! and DIMSE commands; an HL7 message type; a Modbus function and address
//! range), with every length bounded before anything is allocated, and the
//! protocol's own refusal built. [`stream`] puts them in the relay.

pub mod dicom;
pub mod facts;
pub mod hl7;
pub mod modbus;
pub mod stream;
