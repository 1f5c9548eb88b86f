//! The timers and devices bhyve keeps in vmm.ko that KVM lacks:
//! HPET (`vhpet.c`), ACPI PM timer (`vpmtmr.c`), RTC/CMOS (`vrtc.c`).
