"""Turn trained fields into meshes and turntable videos."""
