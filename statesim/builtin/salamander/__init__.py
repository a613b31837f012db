"""The salamander spinal CPG (Ijspeert et al. 2007) and the signal analysis used to judge locomotion."""
