//! The SOP classes the storage SCP accepts: what township and community
//! clinics send (CR, DX, CT, MR, US, MG, secondary capture, ECG waveforms,
//! encapsulated PDF, structured reports, whole-slide images), plus
//! verification. Transfer syntaxes are whatever the modality proposes
//! first among the standard ones: instances are stored as received.

pub const VERIFICATION: &str = "1.2.840.10008.1.1";

pub const STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.1",        // Computed Radiography
    "1.2.840.10008.5.1.4.1.1.1.1",      // Digital X-Ray, for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",    // Digital X-Ray, for processing
    "1.2.840.10008.5.1.4.1.1.1.2",      // Digital Mammography, for presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",    // Digital Mammography, for processing
    "1.2.840.10008.5.1.4.1.1.1.3",      // Digital Intra-Oral X-Ray, for presentation
    "1.2.840.10008.5.1.4.1.1.2",        // CT
    "1.2.840.10008.5.1.4.1.1.2.1",      // Enhanced CT
    "1.2.840.10008.5.1.4.1.1.3.1",      // Ultrasound Multi-frame
    "1.2.840.10008.5.1.4.1.1.4",        // MR
    "1.2.840.10008.5.1.4.1.1.4.1",      // Enhanced MR
    "1.2.840.10008.5.1.4.1.1.6.1",      // Ultrasound
    "1.2.840.10008.5.1.4.1.1.7",        // Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1",      // Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",      // Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",      // Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",      // Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.9.1.1",    // 12-lead ECG Waveform
    "1.2.840.10008.5.1.4.1.1.9.1.2",    // General ECG Waveform
    "1.2.840.10008.5.1.4.1.1.9.1.3",    // Ambulatory ECG Waveform
    "1.2.840.10008.5.1.4.1.1.12.1",     // X-Ray Angiographic
    "1.2.840.10008.5.1.4.1.1.12.2",     // X-Ray Radiofluoroscopic
    "1.2.840.10008.5.1.4.1.1.20",       // Nuclear Medicine
    "1.2.840.10008.5.1.4.1.1.77.1.1",   // VL Endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4",   // VL Photographic
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", // Ophthalmic Photography 8 bit
    "1.2.840.10008.5.1.4.1.1.77.1.6",   // VL Whole Slide Microscopy
    "1.2.840.10008.5.1.4.1.1.88.11",    // Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",    // Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",    // Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.104.1",    // Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.128",      // PET
    "1.2.840.10008.5.1.4.1.1.481.1",    // RT Image
];
